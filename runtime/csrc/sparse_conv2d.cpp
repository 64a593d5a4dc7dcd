// Weight-sparse 2-D convolution on the CPU: the work is proportional to the existing synapses,
// not to the dense kernel. A pruned layer keeps nnz synapses (o, i, kh, kw, w).
//
// Tensors are in a batch-innermost layout, (C, H, W, B) contiguous, so that one synapse's work is
// a few long contiguous multiply-adds over (columns x batch) instead of many short rows:
//
//   forward:       out[o, y, x, :] += w * in[i, iy, ix, :]      (threads own output channels)
//   grad input:    gin[i, iy, ix, :] += w * gout[o, y, x, :]    (threads own input channels)
//   grad weights:  gw[n] = sum over y, x, b of gout[o, y, x, b] * in[i, iy, ix, b]  (per synapse)
//
// with iy = y * sh + kh * dh - ph, ix = x * sw + kw * dw - pw, taps outside the input skipped
// (zero padding). Parallel with ATen's thread pool (torch.set_num_threads applies). Float32.
#include <torch/extension.h>
#include <ATen/Parallel.h>

namespace {

struct Geometry {
  int64_t batch, h, w, ho, wo, sh, sw, ph, pw, dh, dw;
};

// Output columns x whose input column x * sw + off lies in [0, w): [lo, hi).
inline void column_range(int64_t off, const Geometry& g, int64_t& lo, int64_t& hi) {
  lo = off >= 0 ? 0 : (-off + g.sw - 1) / g.sw;
  int64_t last = g.w - 1 - off;
  hi = last < 0 ? 0 : std::min(g.wo, last / g.sw + 1);
  if (hi < lo) hi = lo;
}

// The one loop all three passes share: for every output row y and column x of a synapse's
// footprint, call f(output offset, input offset, length) on runs of contiguous floats.
template <typename F>
inline void footprint(int64_t kh, int64_t kw, const Geometry& g, F&& f) {
  const int64_t off = kw * g.dw - g.pw;
  int64_t lo, hi;
  column_range(off, g, lo, hi);
  if (hi <= lo) return;
  for (int64_t y = 0; y < g.ho; ++y) {
    int64_t iy = y * g.sh + kh * g.dh - g.ph;
    if (iy < 0 || iy >= g.h) continue;
    int64_t out_row = (y * g.wo) * g.batch, in_row = (iy * g.w) * g.batch;
    if (g.sw == 1) {  // columns lo..hi map to a contiguous input run
      f(out_row + lo * g.batch, in_row + (lo + off) * g.batch, (hi - lo) * g.batch);
    } else {
      for (int64_t x = lo; x < hi; ++x)
        f(out_row + x * g.batch, in_row + (x * g.sw + off) * g.batch, g.batch);
    }
  }
}

Geometry geometry(int64_t batch, int64_t h, int64_t w, int64_t ho, int64_t wo,
                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  return {batch, h, w, ho, wo, stride[0], stride[1], padding[0], padding[1], dilation[0],
          dilation[1]};
}

}  // namespace

// input (Cin, H, W, B) -> output (Cout, Ho, Wo, B)
at::Tensor forward(const at::Tensor& input, const at::Tensor& values, const at::Tensor& in_ch,
                   const at::Tensor& kh, const at::Tensor& kw, const at::Tensor& out_ptr,
                   int64_t ho, int64_t wo, at::IntArrayRef stride, at::IntArrayRef padding,
                   at::IntArrayRef dilation) {
  auto in = input.contiguous();
  int64_t cout = out_ptr.size(0) - 1;
  auto g = geometry(in.size(3), in.size(1), in.size(2), ho, wo, stride, padding, dilation);
  auto out = at::zeros({cout, ho, wo, g.batch}, in.options());
  const float* x = in.data_ptr<float>();
  float* y = out.data_ptr<float>();
  const float* v = values.data_ptr<float>();
  const int64_t *ic = in_ch.data_ptr<int64_t>(), *khs = kh.data_ptr<int64_t>(),
                *kws = kw.data_ptr<int64_t>(), *ptr = out_ptr.data_ptr<int64_t>();
  const int64_t in_plane = g.h * g.w * g.batch, out_plane = ho * wo * g.batch;
  at::parallel_for(0, cout, 1, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      float* dst = y + o * out_plane;
      for (int64_t n = ptr[o]; n < ptr[o + 1]; ++n) {
        const float* src = x + ic[n] * in_plane;
        const float w = v[n];
        footprint(khs[n], kws[n], g, [&](int64_t oo, int64_t io, int64_t len) {
          float* d = dst + oo;
          const float* s = src + io;
          for (int64_t k = 0; k < len; ++k) d[k] += w * s[k];
        });
      }
    }
  });
  return out;
}

// grad_out (Cout, Ho, Wo, B) -> grad input (Cin, H, W, B)
at::Tensor grad_input(const at::Tensor& grad_out, const at::Tensor& values,
                      const at::Tensor& out_ch, const at::Tensor& kh, const at::Tensor& kw,
                      const at::Tensor& in_ptr, const at::Tensor& order, int64_t h, int64_t w,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  auto go = grad_out.contiguous();
  int64_t cin = in_ptr.size(0) - 1;
  auto g = geometry(go.size(3), h, w, go.size(1), go.size(2), stride, padding, dilation);
  auto gin = at::zeros({cin, h, w, g.batch}, go.options());
  const float* gy = go.data_ptr<float>();
  float* gx = gin.data_ptr<float>();
  const float* v = values.data_ptr<float>();
  const int64_t *oc = out_ch.data_ptr<int64_t>(), *khs = kh.data_ptr<int64_t>(),
                *kws = kw.data_ptr<int64_t>(), *ptr = in_ptr.data_ptr<int64_t>(),
                *ord = order.data_ptr<int64_t>();
  const int64_t in_plane = h * w * g.batch, out_plane = g.ho * g.wo * g.batch;
  at::parallel_for(0, cin, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* dst = gx + i * in_plane;
      for (int64_t k = ptr[i]; k < ptr[i + 1]; ++k) {
        const int64_t n = ord[k];
        const float* src = gy + oc[n] * out_plane;
        const float w = v[n];
        footprint(khs[n], kws[n], g, [&](int64_t oo, int64_t io, int64_t len) {
          float* d = dst + io;
          const float* s = src + oo;
          for (int64_t q = 0; q < len; ++q) d[q] += w * s[q];
        });
      }
    }
  });
  return gin;
}

// grad_out (Cout, Ho, Wo, B), input (Cin, H, W, B) -> gradient of each existing weight (nnz)
at::Tensor grad_values(const at::Tensor& grad_out, const at::Tensor& input,
                       const at::Tensor& out_ch, const at::Tensor& in_ch, const at::Tensor& kh,
                       const at::Tensor& kw, at::IntArrayRef stride, at::IntArrayRef padding,
                       at::IntArrayRef dilation) {
  auto go = grad_out.contiguous();
  auto in = input.contiguous();
  auto g = geometry(in.size(3), in.size(1), in.size(2), go.size(1), go.size(2), stride, padding,
                    dilation);
  int64_t nnz = out_ch.size(0);
  auto gv = at::zeros({nnz}, in.options());
  const float* gy = go.data_ptr<float>();
  const float* x = in.data_ptr<float>();
  float* out = gv.data_ptr<float>();
  const int64_t *oc = out_ch.data_ptr<int64_t>(), *ic = in_ch.data_ptr<int64_t>(),
                *khs = kh.data_ptr<int64_t>(), *kws = kw.data_ptr<int64_t>();
  const int64_t in_plane = g.h * g.w * g.batch, out_plane = g.ho * g.wo * g.batch;
  at::parallel_for(0, nnz, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const float* src = x + ic[n] * in_plane;
      const float* grad = gy + oc[n] * out_plane;
      double total = 0.0;
      footprint(khs[n], kws[n], g, [&](int64_t oo, int64_t io, int64_t len) {
        float part = 0.f;
        for (int64_t q = 0; q < len; ++q) part += grad[oo + q] * src[io + q];
        total += part;
      });
      out[n] = static_cast<float>(total);
    }
  });
  return gv;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "weight-sparse conv2d forward, (C, H, W, B) layout");
  m.def("grad_input", &grad_input, "weight-sparse conv2d input gradient, (C, H, W, B) layout");
  m.def("grad_values", &grad_values, "weight-sparse conv2d gradient of the existing weights");
}
