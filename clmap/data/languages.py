"""The language codes clmap knows, and one normaliser that turns any accepted spelling into one of them.

Everything inside clmap (corpus folders, language tags, reports) uses ISO 639-1 codes (``en``, ``cs``).
Inputs arrive spelled many ways: FLORES-200 file names (``ces_Latn``), ISO 639-3 (``ces``), the old
bibliographic codes (``cze``), locale tags (``en-US``, ``zh_CN``). :func:`normalize_lang` maps them all,
and an unknown code fails loudly with the place it came from, so a typo never becomes a new "language".
"""

from __future__ import annotations

import re

__all__ = ["LANGUAGES", "FLORES_CODES", "normalize_lang", "is_known_lang", "lang_name"]

# code, English name, other ISO 639-2/3 spellings, FLORES-200 code(s)
_TABLE: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("en", "English", ("eng",), ("eng_Latn",)),
    ("cs", "Czech", ("ces", "cze"), ("ces_Latn",)),
    ("zh", "Chinese", ("zho", "chi", "cmn"), ("zho_Hans", "zho_Hant", "cmn_Hans", "cmn_Hant")),
    ("ja", "Japanese", ("jpn", "jp"), ("jpn_Jpan",)),
    ("uk", "Ukrainian", ("ukr",), ("ukr_Cyrl",)),
    ("de", "German", ("deu", "ger"), ("deu_Latn",)),
    ("fr", "French", ("fra", "fre"), ("fra_Latn",)),
    ("es", "Spanish", ("spa",), ("spa_Latn",)),
    ("it", "Italian", ("ita",), ("ita_Latn",)),
    ("pt", "Portuguese", ("por",), ("por_Latn",)),
    ("nl", "Dutch", ("nld", "dut"), ("nld_Latn",)),
    ("ru", "Russian", ("rus",), ("rus_Cyrl",)),
    ("pl", "Polish", ("pol",), ("pol_Latn",)),
    ("sk", "Slovak", ("slk", "slo"), ("slk_Latn",)),
    ("sl", "Slovenian", ("slv",), ("slv_Latn",)),
    ("hr", "Croatian", ("hrv",), ("hrv_Latn",)),
    ("sr", "Serbian", ("srp",), ("srp_Cyrl",)),
    ("bs", "Bosnian", ("bos",), ("bos_Latn",)),
    ("mk", "Macedonian", ("mkd", "mac"), ("mkd_Cyrl",)),
    ("bg", "Bulgarian", ("bul",), ("bul_Cyrl",)),
    ("be", "Belarusian", ("bel",), ("bel_Cyrl",)),
    ("ro", "Romanian", ("ron", "rum"), ("ron_Latn",)),
    ("hu", "Hungarian", ("hun",), ("hun_Latn",)),
    ("el", "Greek", ("ell", "gre"), ("ell_Grek",)),
    ("fi", "Finnish", ("fin",), ("fin_Latn",)),
    ("et", "Estonian", ("est",), ("est_Latn",)),
    ("lv", "Latvian", ("lav", "lvs"), ("lvs_Latn",)),
    ("lt", "Lithuanian", ("lit",), ("lit_Latn",)),
    ("sv", "Swedish", ("swe",), ("swe_Latn",)),
    ("da", "Danish", ("dan",), ("dan_Latn",)),
    ("nb", "Norwegian Bokmål", ("nob", "no", "nor"), ("nob_Latn",)),
    ("nn", "Norwegian Nynorsk", ("nno",), ("nno_Latn",)),
    ("is", "Icelandic", ("isl", "ice"), ("isl_Latn",)),
    ("ga", "Irish", ("gle",), ("gle_Latn",)),
    ("cy", "Welsh", ("cym", "wel"), ("cym_Latn",)),
    ("eu", "Basque", ("eus", "baq"), ("eus_Latn",)),
    ("ca", "Catalan", ("cat",), ("cat_Latn",)),
    ("gl", "Galician", ("glg",), ("glg_Latn",)),
    ("mt", "Maltese", ("mlt",), ("mlt_Latn",)),
    ("sq", "Albanian", ("sqi", "alb", "als"), ("als_Latn",)),
    ("lb", "Luxembourgish", ("ltz",), ("ltz_Latn",)),
    ("eo", "Esperanto", ("epo",), ("epo_Latn",)),
    ("la", "Latin", ("lat",), ()),
    ("tr", "Turkish", ("tur",), ("tur_Latn",)),
    ("az", "Azerbaijani", ("aze", "azj"), ("azj_Latn",)),
    ("kk", "Kazakh", ("kaz",), ("kaz_Cyrl",)),
    ("ky", "Kyrgyz", ("kir",), ("kir_Cyrl",)),
    ("uz", "Uzbek", ("uzb", "uzn"), ("uzn_Latn",)),
    ("tk", "Turkmen", ("tuk",), ("tuk_Latn",)),
    ("tt", "Tatar", ("tat",), ("tat_Cyrl",)),
    ("tg", "Tajik", ("tgk",), ("tgk_Cyrl",)),
    ("mn", "Mongolian", ("mon", "khk"), ("khk_Cyrl",)),
    ("ka", "Georgian", ("kat", "geo"), ("kat_Geor",)),
    ("hy", "Armenian", ("hye", "arm"), ("hye_Armn",)),
    ("he", "Hebrew", ("heb", "iw"), ("heb_Hebr",)),
    ("ar", "Arabic", ("ara", "arb"), ("arb_Arab",)),
    ("fa", "Persian", ("fas", "per", "pes"), ("pes_Arab",)),
    ("ps", "Pashto", ("pus", "pbt"), ("pbt_Arab",)),
    ("ur", "Urdu", ("urd",), ("urd_Arab",)),
    ("ug", "Uyghur", ("uig",), ("uig_Arab",)),
    ("hi", "Hindi", ("hin",), ("hin_Deva",)),
    ("bn", "Bengali", ("ben",), ("ben_Beng",)),
    ("pa", "Punjabi", ("pan",), ("pan_Guru",)),
    ("gu", "Gujarati", ("guj",), ("guj_Gujr",)),
    ("mr", "Marathi", ("mar",), ("mar_Deva",)),
    ("ne", "Nepali", ("nep", "npi"), ("npi_Deva",)),
    ("ta", "Tamil", ("tam",), ("tam_Taml",)),
    ("te", "Telugu", ("tel",), ("tel_Telu",)),
    ("kn", "Kannada", ("kan",), ("kan_Knda",)),
    ("ml", "Malayalam", ("mal",), ("mal_Mlym",)),
    ("si", "Sinhala", ("sin",), ("sin_Sinh",)),
    ("th", "Thai", ("tha",), ("tha_Thai",)),
    ("lo", "Lao", ("lao",), ("lao_Laoo",)),
    ("km", "Khmer", ("khm",), ("khm_Khmr",)),
    ("my", "Burmese", ("mya", "bur"), ("mya_Mymr",)),
    ("vi", "Vietnamese", ("vie",), ("vie_Latn",)),
    ("id", "Indonesian", ("ind",), ("ind_Latn",)),
    ("ms", "Malay", ("msa", "may", "zsm"), ("zsm_Latn",)),
    ("tl", "Tagalog", ("tgl", "fil"), ("tgl_Latn",)),
    ("jv", "Javanese", ("jav",), ("jav_Latn",)),
    ("su", "Sundanese", ("sun",), ("sun_Latn",)),
    ("ko", "Korean", ("kor",), ("kor_Hang",)),
    ("sw", "Swahili", ("swa", "swh"), ("swh_Latn",)),
    ("am", "Amharic", ("amh",), ("amh_Ethi",)),
    ("so", "Somali", ("som",), ("som_Latn",)),
    ("ha", "Hausa", ("hau",), ("hau_Latn",)),
    ("yo", "Yoruba", ("yor",), ("yor_Latn",)),
    ("ig", "Igbo", ("ibo",), ("ibo_Latn",)),
    ("zu", "Zulu", ("zul",), ("zul_Latn",)),
    ("xh", "Xhosa", ("xho",), ("xho_Latn",)),
    ("af", "Afrikaans", ("afr",), ("afr_Latn",)),
)

LANGUAGES: dict[str, str] = {code: name for code, name, _, _ in _TABLE}
"""ISO 639-1 code -> English name, for every language clmap knows."""

FLORES_CODES: dict[str, str] = {flores: code for code, _, _, floreses in _TABLE for flores in floreses}
"""FLORES-200 code (``eng_Latn``) -> clmap code (``en``)."""

# Every accepted spelling, lower-cased, -> clmap code.
_ALIASES: dict[str, str] = {code: code for code in LANGUAGES}
_ALIASES.update({alias: code for code, _, aliases, _ in _TABLE for alias in aliases})
_ALIASES.update({flores.lower(): code for flores, code in FLORES_CODES.items()})
# Locale / script subtags after the language: en-US, zh_Hans, pt-BR, sr-Latn, es-419.
_SUBTAG = re.compile(r"^[a-z]{2}$|^[a-z]{4}$|^\d{3}$")


def _is_subtag(part: str) -> bool:
    # A lower-case two-letter subtag that is itself a language ("en-cs") is a pair, not a locale.
    if len(part) == 2 and part.islower() and part in _ALIASES:
        return False
    return bool(_SUBTAG.match(part.lower()))


def _lookup(code: str) -> str | None:
    key = code.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    head, *rest = re.split(r"[-_]", code.strip())
    if head.lower() in _ALIASES and rest and all(_is_subtag(part) for part in rest):
        return _ALIASES[head.lower()]
    return None


def is_known_lang(code: object) -> bool:
    """True if ``code`` is any spelling :func:`normalize_lang` accepts (used to sniff headers and fields)."""
    return isinstance(code, str) and _lookup(code) is not None


def normalize_lang(code: object, where: str) -> str:
    """The clmap (ISO 639-1) code for ``code``; ``where`` names the file/line/field it came from.

    Raises ValueError naming ``where``, the bad code and the known codes, so a typo such as ``cz`` in
    one corpus file is caught where it is instead of silently creating a language of its own.
    """
    found = _lookup(code) if isinstance(code, str) else None
    if found is None:
        known = ", ".join(LANGUAGES)
        raise ValueError(
            f"{where}: unknown language code {code!r}; known: {known} "
            "(also their ISO 639-3 and FLORES-200 spellings, e.g. 'ces' or 'ces_Latn', "
            "and locales like 'en-US')"
        )
    return found


def lang_name(code: str) -> str:
    """English name of a language, for reports (``'cs'`` -> ``'Czech'``)."""
    return LANGUAGES[normalize_lang(code, "lang_name")]
