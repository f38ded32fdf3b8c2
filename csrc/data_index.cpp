// Data-index builders for clmap: the blended sample index (which source each training sample comes
// from) and the sequence-packing plan (which packed row each document goes into).
//
// Both are pure functions of their inputs, so the data stream can be rebuilt and resumed from a sample
// position instead of being checkpointed. clmap/data/index.py holds the Python API and plain-Python
// references that these must match exactly.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

using F64Array = py::array_t<double, py::array::c_style | py::array::forcecast>;
using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

void require_1d(const py::array& a, const char* name) {
    if (a.ndim() != 1) {
        std::ostringstream msg;
        msg << name << " must be 1-D, got " << a.ndim() << " dimensions";
        throw py::value_error(msg.str());
    }
}

// Megatron-LM style greedy blending: at step i take the source whose realised count lags its target
// share the most, so every prefix of the stream matches the weights to within one sample per source.
// ``start`` and ``taken`` continue the stream at a later position: samples [start, start + num_samples) of
// the same index, given how many samples of each source the first ``start`` took (chunks in bounded memory).
py::tuple build_blended_index(const F64Array& weights_in, const I64Array& sizes_in, int64_t num_samples,
                              int64_t start, const I64Array& taken_in) {
    require_1d(weights_in, "weights");
    require_1d(sizes_in, "sizes");
    const auto k_sources = static_cast<size_t>(weights_in.shape(0));
    if (k_sources == 0) throw py::value_error("weights must name at least one source");
    if (static_cast<size_t>(sizes_in.shape(0)) != k_sources) {
        std::ostringstream msg;
        msg << "weights and sizes must have the same length, got " << k_sources << " and "
            << sizes_in.shape(0);
        throw py::value_error(msg.str());
    }
    if (num_samples < 0) {
        throw py::value_error("num_samples must be >= 0, got " + std::to_string(num_samples));
    }
    if (start < 0) throw py::value_error("start must be >= 0, got " + std::to_string(start));
    if (k_sources > static_cast<size_t>(INT32_MAX)) throw py::value_error("too many sources for int32 ids");
    std::vector<int64_t> taken(k_sources, 0);
    if (start != 0 || taken_in.size() != 0) {
        require_1d(taken_in, "taken");
        if (static_cast<size_t>(taken_in.shape(0)) != k_sources) {
            throw py::value_error("taken must have one count per source, got " +
                                  std::to_string(taken_in.shape(0)) + " for " + std::to_string(k_sources));
        }
        int64_t total_taken = 0;
        for (size_t k = 0; k < k_sources; ++k) {
            if (taken_in.data()[k] < 0) throw py::value_error("taken must be >= 0");
            taken[k] = taken_in.data()[k];
            total_taken += taken[k];
        }
        if (total_taken != start) {
            throw py::value_error("taken must add up to start (" + std::to_string(start) + "), got " +
                                  std::to_string(total_taken));
        }
    }

    std::vector<double> weights(weights_in.data(), weights_in.data() + k_sources);
    std::vector<int64_t> sizes(sizes_in.data(), sizes_in.data() + k_sources);
    double total = 0.0;  // sequential sum: the Python reference sums in the same order, bit for bit
    for (size_t k = 0; k < k_sources; ++k) {
        if (!std::isfinite(weights[k]) || weights[k] < 0.0) {
            std::ostringstream msg;
            msg << "weights must be finite and >= 0, got weights[" << k << "] = " << weights[k];
            throw py::value_error(msg.str());
        }
        if (sizes[k] < 0) {
            std::ostringstream msg;
            msg << "sizes must be >= 0, got sizes[" << k << "] = " << sizes[k];
            throw py::value_error(msg.str());
        }
        if (sizes[k] == 0 && weights[k] > 0.0) {
            std::ostringstream msg;
            msg << "source " << k << " has weight " << weights[k] << " but size 0: it cannot supply samples";
            throw py::value_error(msg.str());
        }
        total += weights[k];
    }
    if (!(total > 0.0)) throw py::value_error("weights must not all be zero");
    for (auto& w : weights) w /= total;

    py::array_t<int32_t> source(num_samples);
    py::array_t<int64_t> sample(num_samples);
    int32_t* src = source.mutable_data();
    int64_t* smp = sample.mutable_data();
    {
        py::gil_scoped_release release;
        for (int64_t i = 0; i < num_samples; ++i) {
            const double step = static_cast<double>(start + i + 1);
            size_t best = 0;
            double best_err = weights[0] * step - static_cast<double>(taken[0]);
            for (size_t k = 1; k < k_sources; ++k) {
                const double err = weights[k] * step - static_cast<double>(taken[k]);
                if (err > best_err) {  // strict: ties go to the lowest k
                    best_err = err;
                    best = k;
                }
            }
            src[i] = static_cast<int32_t>(best);
            smp[i] = taken[best] % sizes[best];  // wrap into a new epoch of that source when exhausted
            taken[best] += 1;
        }
    }
    return py::make_tuple(source, sample);
}

// Open bins with capacity <= this are kept in per-remaining-space buckets (cache friendly, ~3x faster than a
// tree at 1M items); larger capacities fall back to an ordered set. Both give identical plans.
constexpr int64_t kBucketCapacityLimit = int64_t{1} << 20;

// Items sorted longest first, ties by original index (stable), as indices into lengths.
std::vector<int64_t> decreasing_order(const std::vector<int64_t>& lengths, int64_t capacity) {
    const size_t m = lengths.size();
    std::vector<int64_t> order(m);
    if (capacity <= kBucketCapacityLimit) {  // counting sort: O(M + capacity), stable by construction
        std::vector<int64_t> start(static_cast<size_t>(capacity) + 2, 0);
        for (int64_t len : lengths) start[static_cast<size_t>(capacity - len) + 1] += 1;
        for (size_t v = 1; v < start.size(); ++v) start[v] += start[v - 1];
        for (size_t i = 0; i < m; ++i) order[start[static_cast<size_t>(capacity - lengths[i])]++] = i;
    } else {
        std::iota(order.begin(), order.end(), int64_t{0});
        std::stable_sort(order.begin(), order.end(),
                         [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });
    }
    return order;
}

// Open bins grouped by remaining space r in [1, capacity]: a min-heap of bin ids per r, plus a two-level
// bitset of non-empty r so "smallest r >= len" is a couple of word scans.
class BinBuckets {
  public:
    explicit BinBuckets(int64_t capacity)
        : heaps_(static_cast<size_t>(capacity) + 1),
          words_((static_cast<size_t>(capacity) >> 6) + 1, 0),
          top_((words_.size() >> 6) + 1, 0) {}

    // Smallest non-empty r >= len, or -1.
    int64_t find(int64_t len) const {
        size_t r = static_cast<size_t>(std::max<int64_t>(len, 1));
        size_t w = r >> 6;
        if (w >= words_.size()) return -1;
        uint64_t bits = words_[w] & (~uint64_t{0} << (r & 63));
        if (bits) return static_cast<int64_t>((w << 6) | static_cast<size_t>(__builtin_ctzll(bits)));
        size_t t = (w + 1) >> 6;
        if (t >= top_.size()) return -1;
        uint64_t tbits = top_[t] & (~uint64_t{0} << ((w + 1) & 63));  // words after w
        while (!tbits) {
            if (++t >= top_.size()) return -1;
            tbits = top_[t];
        }
        const size_t w2 = (t << 6) | static_cast<size_t>(__builtin_ctzll(tbits));
        return static_cast<int64_t>((w2 << 6) | static_cast<size_t>(__builtin_ctzll(words_[w2])));
    }

    int64_t pop(int64_t r) {  // lowest bin id with remaining space r
        auto& heap = heaps_[static_cast<size_t>(r)];
        std::pop_heap(heap.begin(), heap.end(), std::greater<>());
        const int64_t bin = heap.back();
        heap.pop_back();
        if (heap.empty()) set_bit(static_cast<size_t>(r), false);
        return bin;
    }

    void push(int64_t r, int64_t bin) {
        auto& heap = heaps_[static_cast<size_t>(r)];
        if (heap.empty()) set_bit(static_cast<size_t>(r), true);
        heap.push_back(bin);
        std::push_heap(heap.begin(), heap.end(), std::greater<>());
    }

  private:
    void set_bit(size_t r, bool on) {
        const size_t w = r >> 6;
        if (on) {
            words_[w] |= uint64_t{1} << (r & 63);
            top_[w >> 6] |= uint64_t{1} << (w & 63);
        } else {
            words_[w] &= ~(uint64_t{1} << (r & 63));
            if (!words_[w]) top_[w >> 6] &= ~(uint64_t{1} << (w & 63));
        }
    }

    std::vector<std::vector<int64_t>> heaps_;
    std::vector<uint64_t> words_;
    std::vector<uint64_t> top_;
};

// Best-fit decreasing: long documents first, each into the fullest open bin that still has room, which
// keeps padding low. Ties between equally full bins go to the lowest bin id; full bins leave the open set.
py::array_t<int64_t> plan_packing(const I64Array& lengths_in, int64_t capacity) {
    require_1d(lengths_in, "lengths");
    if (capacity < 1) throw py::value_error("capacity must be >= 1, got " + std::to_string(capacity));
    const auto m_items = static_cast<size_t>(lengths_in.shape(0));
    std::vector<int64_t> lengths(lengths_in.data(), lengths_in.data() + m_items);
    for (size_t i = 0; i < m_items; ++i) {
        if (lengths[i] < 0) {
            std::ostringstream msg;
            msg << "lengths must be >= 0, got lengths[" << i << "] = " << lengths[i];
            throw py::value_error(msg.str());
        }
        if (lengths[i] > capacity) {
            std::ostringstream msg;
            msg << "item " << i << " has length " << lengths[i] << " which exceeds the capacity " << capacity
                << "; truncate or split it before packing";
            throw py::value_error(msg.str());
        }
    }

    py::array_t<int64_t> bins_out(static_cast<py::ssize_t>(m_items));
    int64_t* bins = bins_out.mutable_data();
    {
        py::gil_scoped_release release;
        const std::vector<int64_t> order = decreasing_order(lengths, capacity);
        int64_t num_bins = 0;
        if (capacity <= kBucketCapacityLimit) {
            BinBuckets open(capacity);
            for (int64_t i : order) {
                const int64_t len = lengths[i];
                const int64_t fit = open.find(len);
                int64_t remaining = capacity;
                int64_t bin;
                if (fit >= 0) {
                    remaining = fit;
                    bin = open.pop(fit);
                } else {
                    bin = num_bins++;
                }
                bins[i] = bin;
                remaining -= len;
                if (remaining > 0) open.push(remaining, bin);
            }
        } else {
            std::set<std::pair<int64_t, int64_t>> open;  // (remaining space, bin id)
            for (int64_t i : order) {
                const int64_t len = lengths[i];
                int64_t remaining = capacity;
                int64_t bin;
                auto it = open.lower_bound({len, INT64_MIN});
                if (it != open.end()) {
                    remaining = it->first;
                    bin = it->second;
                    open.erase(it);
                } else {
                    bin = num_bins++;
                }
                bins[i] = bin;
                remaining -= len;
                if (remaining > 0) open.emplace(remaining, bin);
            }
        }
    }
    return bins_out;
}

}  // namespace

PYBIND11_MODULE(_csrc, m) {
    m.doc() = "clmap C++ data-index builders: blended sample index and sequence-packing plan";
    m.def("build_blended_index", &build_blended_index, py::arg("weights"), py::arg("sizes"),
          py::arg("num_samples"), py::arg("start") = 0, py::arg("taken") = I64Array(0),
          "Greedy weighted interleaving of K sources; returns (source int32[n], sample int64[n]) of the\n"
          "positions [start, start + n), given the samples each source took before start.");
    m.def("plan_packing", &plan_packing, py::arg("lengths"), py::arg("capacity"),
          "Best-fit-decreasing bin packing; returns the bin id (in order of opening) of every item.");
}
