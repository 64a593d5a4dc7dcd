// The integrate-and-fire scan over T time steps, fused: each neuron's membrane stays in a register
// (a small block of neurons in L1) for all T steps, instead of T passes of several whole-tensor
// operations over memory. Same equations, same operation order as the reference scan of
// runtime/neurons.py (_scan_forward / _IFScan.backward), so the spikes are identical bit for bit
// (tested against the step-by-step reference) and the gradients agree to rounding.
//
// Layout: currents (T, E) contiguous, or (E) held constant for T steps; E = N x C x inner neurons.
// Thresholds are per channel: neuron e's is channel (e / inner) % channels (1: one threshold;
// channels = E, inner = 1: one per neuron). Reset "zero" (v <- 0 at a spike) or by subtraction
// (v <- v - threshold). Parallel over neurons with ATen's thread pool. float32 and float64.
// Built with -ffp-contract=off (no fused multiply-adds: the reference rounds each operation) and
// -fno-trapping-math (lets the compare-and-select loops vectorise; the values are unchanged).
//
//   forward:  v += I_t;  s_t = v > theta;  v <- reset(v, s_t)
//             writes spikes (T, E) and/or counts (E), the pre-reset potentials (T, E) when the
//             backward pass needs them, and the final membrane (E).
//   backward: walks t = T-1 .. 0 with g, the gradient reaching the post-reset membrane; the
//             surrogate's slope d_t = sigma'(v_t / theta - 1) / theta is computed here for the
//             fixed-width triangle, rectangular, fast sigmoid and straight-through surrogates
//             (as compiler/ir/surrogates.py writes them), else given by the caller as a (T, E)
//             tensor (any surrogate, adaptive widths included); see _IFScan's docstring.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <type_traits>
#include <vector>

// On x86-64 Linux the two scans are also compiled for AVX2 and the loader picks the variant the
// CPU has (GCC/Clang function multi-versioning): the backward pass is bound by arithmetic, and
// the baseline's SSE2 does half as much per instruction. Elsewhere: one baseline build.
#if defined(__x86_64__) && defined(__ELF__) && (defined(__GNUC__) || defined(__clang__))
#define SPIKESHIELD_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define SPIKESHIELD_MULTIVERSION
#endif

namespace {

constexpr int64_t kBlock = 256;  // neurons whose state the backward pass keeps in local arrays
// The forward pass walks longer runs of each step's currents and spikes (fewer, longer memory
// streams: measured faster than 256 on the 2-core EPYC).
constexpr int64_t kForwardBlock = 4096;
constexpr int64_t kGrain = 4096;  // neurons per parallel task at least

// The threshold of each of the n neurons from e0 on: one division for the block, not one per
// neuron (64-bit divisions per neuron cost more than the whole scan).
template <typename T>
inline void gather_thresholds(const T* theta, int64_t channels, int64_t inner, int64_t e0,
                              int64_t n, T* out) {
  if (channels == 1) {
    for (int64_t i = 0; i < n; ++i) out[i] = theta[0];
    return;
  }
  int64_t c = (e0 / inner) % channels, r = e0 % inner;
  for (int64_t i = 0; i < n; ++i) {
    out[i] = theta[c];
    if (++r == inner) {
      r = 0;
      if (++c == channels) c = 0;
    }
  }
}

// Calls f(std::integral_constant<bool, b>): turns a run-time flag into a template argument, so
// that every inner loop below is free of branches and vectorises.
template <typename F>
inline void with_flag(bool b, F&& f) {
  if (b) f(std::true_type{}); else f(std::false_type{});
}

// Neurons [begin, end) of the forward scan. A function of its own, not the body of the parallel
// lambda: pointers captured by reference lose __restrict__, and the loops then do not vectorise
// (measured 4x slower).
template <typename T, bool kZero, bool kConstant, bool kSpikes, bool kCounts, bool kPotentials>
SPIKESHIELD_MULTIVERSION void forward_range(const T* __restrict__ currents, const T* __restrict__ theta, int64_t channels,
                   int64_t inner, const T* __restrict__ v0, int64_t steps, int64_t E,
                   T* __restrict__ spikes, T* __restrict__ counts, T* __restrict__ potentials,
                   T* __restrict__ v_out, int64_t begin, int64_t end) {
  {
    std::vector<T> v_block(kForwardBlock), th_block(kForwardBlock), count_block(kForwardBlock);
    T* __restrict__ v = v_block.data();
    T* __restrict__ th = th_block.data();
    T* __restrict__ count = count_block.data();
    for (int64_t lo = begin; lo < end; lo += kForwardBlock) {
      const int64_t n = std::min(kForwardBlock, end - lo);
      gather_thresholds(theta, channels, inner, lo, n, th);
      for (int64_t i = 0; i < n; ++i) {
        v[i] = v0 ? v0[lo + i] : T(0);
        count[i] = T(0);
      }
      for (int64_t t = 0; t < steps; ++t) {
        const T* __restrict__ x = kConstant ? currents + lo : currents + t * E + lo;
        T* __restrict__ s_out = spikes + (kSpikes ? t * E + lo : 0);
        T* __restrict__ p_out = potentials + (kPotentials ? t * E + lo : 0);
        for (int64_t i = 0; i < n; ++i) {
          const T vi = v[i] + x[i];
          if (kPotentials) p_out[i] = vi;
          const T s = vi > th[i] ? T(1) : T(0);
          if (kSpikes) s_out[i] = s;
          if (kCounts) count[i] += s;
          // v - v*s (reset to zero) and v - theta*s (subtraction), as the reference computes them
          v[i] = kZero ? vi - vi * s : vi - th[i] * s;
        }
      }
      for (int64_t i = 0; i < n; ++i) v_out[lo + i] = v[i];
      if (kCounts)
        for (int64_t i = 0; i < n; ++i) counts[lo + i] = count[i];
    }
  }
}

template <typename T, bool kZero, bool kConstant, bool kSpikes, bool kCounts, bool kPotentials>
void forward_kernel(const T* currents, const T* theta, int64_t channels, int64_t inner,
                    const T* v0, int64_t steps, int64_t E, T* spikes, T* counts, T* potentials,
                    T* v_out) {
  at::parallel_for(0, E, kGrain, [=](int64_t begin, int64_t end) {
    forward_range<T, kZero, kConstant, kSpikes, kCounts, kPotentials>(
        currents, theta, channels, inner, v0, steps, E, spikes, counts, potentials, v_out, begin,
        end);
  });
}

// Surrogates whose slope the backward pass computes itself (0: the caller's slope tensor).
enum Surrogate : int64_t { kGiven = 0, kTriangle = 1, kRectangular = 2, kFastSigmoid = 3,
                           kStraightThrough = 4 };

// d_i = sigma'(u_i) / theta_i with u_i = v_i / theta_i - 1, in the operation order of the
// PyTorch definitions (v * (1/theta) - 1, then sigma', then * (1/theta)).
template <typename T>
inline void surrogate_slope(int64_t kind, T gamma, const T* __restrict__ v,
                            const T* __restrict__ inv, int64_t n, T* __restrict__ d) {
  switch (kind) {
    case kTriangle: {
      const T gg = gamma * gamma;
      for (int64_t i = 0; i < n; ++i) {
        const T u = v[i] * inv[i] - T(1);
        const T a = gamma - std::abs(u);
        d[i] = (a > T(0) ? a : T(0)) / gg * inv[i];
      }
      break;
    }
    case kRectangular: {
      const T half = gamma / T(2);
      for (int64_t i = 0; i < n; ++i) {
        const T u = v[i] * inv[i] - T(1);
        d[i] = (std::abs(u) < half ? T(1) : T(0)) / gamma * inv[i];
      }
      break;
    }
    case kFastSigmoid:
      for (int64_t i = 0; i < n; ++i) {
        const T u = v[i] * inv[i] - T(1);
        const T b = T(1) + gamma * std::abs(u);
        d[i] = T(1) / (b * b) * inv[i];
      }
      break;
    default:  // straight-through: sigma' = 1
      for (int64_t i = 0; i < n; ++i) d[i] = T(1) * inv[i];
  }
}

// The pre-reset membranes v_t of neurons [lo, lo + n) for every step, recomputed from the currents
// with the forward's own operations (so they are the forward's values exactly) into
// out[t * kBlock + i]: the backward pass then needs no stored potentials, and the forward pass
// writes only its spikes.
template <typename T, bool kZero, bool kConstant>
inline void replay_block(const T* __restrict__ currents, const T* __restrict__ v0,
                         const T* __restrict__ th, int64_t steps, int64_t E, int64_t lo,
                         int64_t n, T* __restrict__ out) {
  T v[kBlock];
  for (int64_t i = 0; i < n; ++i) v[i] = v0 ? v0[lo + i] : T(0);
  for (int64_t t = 0; t < steps; ++t) {
    const T* __restrict__ x = kConstant ? currents + lo : currents + t * E + lo;
    T* __restrict__ o = out + t * kBlock;
    for (int64_t i = 0; i < n; ++i) {
      const T vi = v[i] + x[i];
      o[i] = vi;
      const T s = vi > th[i] ? T(1) : T(0);
      v[i] = kZero ? vi - vi * s : vi - th[i] * s;
    }
  }
}

template <typename T, bool kZero, bool kDetached, bool kConstant, bool kGradSpikes, bool kWantX,
          bool kWantTheta>
SPIKESHIELD_MULTIVERSION void backward_range(const T* __restrict__ potentials, const T* __restrict__ currents,
                    const T* __restrict__ v0, const T* __restrict__ slope,
                    const T* __restrict__ grad_spikes, const T* __restrict__ theta,
                    const T* __restrict__ inverse, int64_t channels, int64_t inner,
                    int64_t steps, int64_t E, T* __restrict__ g_io, T* __restrict__ grad_x,
                    T* __restrict__ grad_theta, int64_t kind, T gamma, int64_t begin,
                    int64_t end) {
  {
    T dd[kBlock];
    T g[kBlock], th[kBlock], inv[kBlock], g_theta[kBlock], g_sum[kBlock];
    std::vector<T> replayed(currents ? steps * kBlock : 0);
    for (int64_t lo = begin; lo < end; lo += kBlock) {
      const int64_t n = std::min(kBlock, end - lo);
      gather_thresholds(theta, channels, inner, lo, n, th);
      gather_thresholds(inverse, channels, inner, lo, n, inv);
      for (int64_t i = 0; i < n; ++i) {
        g[i] = g_io[lo + i];
        g_theta[i] = T(0);
        g_sum[i] = T(0);
      }
      if (currents)
        replay_block<T, kZero, kConstant>(currents, v0, th, steps, E, lo, n, replayed.data());
      for (int64_t t = steps - 1; t >= 0; --t) {
        const T* __restrict__ pv =
            currents ? replayed.data() + t * kBlock : potentials + t * E + lo;
        const T* __restrict__ pd = dd;
        if (kind == kGiven) pd = slope + t * E + lo;
        else surrogate_slope(kind, gamma, pv, inv, n, dd);
        const T* __restrict__ pg = grad_spikes + (kGradSpikes ? t * E + lo : 0);
        T* __restrict__ px = grad_x + (kWantX && !kConstant ? t * E + lo : 0);
        for (int64_t i = 0; i < n; ++i) {
          const T v = pv[i], d = pd[i], gi = g[i];
          const T fired = v > th[i] ? T(1) : T(0);
          const T gs = kGradSpikes ? pg[i] : T(0);
          T through;
          if (kDetached) {
            through = gs * d;
          } else if (!kZero) {
            through = (gs - gi * th[i]) * d;
          } else {
            through = (gs - gi * v) * d;
          }
          if (kWantTheta) {
            T gt = g_theta[i] - through * (v * inv[i]);
            if (!kZero && !kDetached) gt = gt - gi * fired;
            g_theta[i] = gt;
          }
          const T next = (kZero && !kDetached) ? (gi - gi * fired) + through : gi + through;
          g[i] = next;
          if (kWantX) {
            if (kConstant) g_sum[i] += next; else px[i] = next;
          }
        }
      }
      for (int64_t i = 0; i < n; ++i) g_io[lo + i] = g[i];
      if (kWantX && kConstant)
        for (int64_t i = 0; i < n; ++i) grad_x[lo + i] = g_sum[i];
      if (kWantTheta)
        for (int64_t i = 0; i < n; ++i) grad_theta[lo + i] = g_theta[i];
    }
  }
}

template <typename T, bool kZero, bool kDetached, bool kConstant, bool kGradSpikes, bool kWantX,
          bool kWantTheta>
void backward_kernel(const T* potentials, const T* currents, const T* v0, const T* slope,
                     const T* grad_spikes, const T* theta, const T* inverse, int64_t channels,
                     int64_t inner, int64_t steps, int64_t E, T* g_io, T* grad_x, T* grad_theta,
                     int64_t kind, T gamma) {
  at::parallel_for(0, E, kGrain, [=](int64_t begin, int64_t end) {
    backward_range<T, kZero, kDetached, kConstant, kGradSpikes, kWantX, kWantTheta>(
        potentials, currents, v0, slope, grad_spikes, theta, inverse, channels, inner, steps, E, g_io, grad_x,
        grad_theta, kind, gamma, begin, end);
  });
}


// ASSG (gradient mode ``assg``): one pass over a scan's pre-reset potentials (T, E) that updates
// each neuron's and step's running moments of |u|, u = v / theta - 1 (``mean``, ``spread``, in
// place; ``fresh``: they start at 1 and 0) and writes the backward pass's slope
// d = arctan'(u'; alpha) / theta, with alpha = scale / (mean + relax * spread + 1e-4) and
// u' = v * (1 / theta) - 1, in the operation order of SharpnessTracker.slope and the arctan
// derivative of compiler/ir/surrogates.py (what the PyTorch path computes in some twenty passes).
template <typename T>
SPIKESHIELD_MULTIVERSION void assg_range(const T* __restrict__ potentials, const T* __restrict__ theta,
                                         int64_t channels, int64_t inner, T* __restrict__ mean,
                                         T* __restrict__ spread, T* __restrict__ slope, int64_t steps,
                                         int64_t E, T keep, T fresh_weight, T relax, T scale,
                                         bool fresh, int64_t begin, int64_t end) {
  std::vector<T> th_block(kForwardBlock), inv_block(kForwardBlock);
  T* __restrict__ th = th_block.data();
  T* __restrict__ inv = inv_block.data();
  const T half_pi = static_cast<T>(M_PI / 2);
  for (int64_t lo = begin; lo < end; lo += kForwardBlock) {
    const int64_t n = std::min(kForwardBlock, end - lo);
    gather_thresholds(theta, channels, inner, lo, n, th);
    for (int64_t i = 0; i < n; ++i) inv[i] = T(1) / th[i];
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t o = t * E + lo;
      const T* __restrict__ v = potentials + o;
      T* __restrict__ m = mean + o;
      T* __restrict__ sp = spread + o;
      T* __restrict__ d = slope + o;
      for (int64_t i = 0; i < n; ++i) {
        const T distance = std::abs(v[i] / th[i] - T(1));
        const T m0 = fresh ? T(1) : m[i];
        const T s0 = fresh ? T(0) : sp[i];
        const T mi = m0 * keep + distance * fresh_weight;
        const T si = s0 * keep + std::abs(distance - mi) * fresh_weight;
        m[i] = mi;
        sp[i] = si;
        const T alpha = scale / (mi + relax * si + static_cast<T>(1e-4));
        const T u = v[i] * inv[i] - T(1);
        const T z = half_pi * alpha * u;
        d[i] = alpha / T(2) / (T(1) + z * z) * inv[i];
      }
    }
  }
}

void check(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), what, " must be a contiguous CPU tensor");
}

}  // namespace

// Returns (spikes or empty, counts or empty, potentials or empty, final membrane).
std::vector<at::Tensor> forward(const at::Tensor& currents, const at::Tensor& theta,
                                int64_t channels, int64_t inner, const c10::optional<at::Tensor>& v0,
                                bool zero, int64_t steps, bool constant, bool want_spikes,
                                bool want_counts, bool want_potentials) {
  check(currents, "currents");
  check(theta, "theta");
  const int64_t E = constant ? currents.numel() : currents.numel() / std::max<int64_t>(1, steps);
  TORCH_CHECK(constant || currents.numel() == steps * E, "currents must be (T, E)");
  TORCH_CHECK(theta.numel() == channels && theta.scalar_type() == currents.scalar_type(),
              "theta must hold one value per channel, of the currents' dtype");
  auto opts = currents.options();
  at::Tensor spikes = want_spikes ? at::empty({steps, E}, opts) : at::Tensor();
  at::Tensor counts = want_counts ? at::empty({E}, opts) : at::Tensor();
  at::Tensor potentials = want_potentials ? at::empty({steps, E}, opts) : at::Tensor();
  at::Tensor v_out = at::empty({E}, opts);
  at::Tensor start;
  if (v0.has_value() && v0->defined()) {
    start = *v0;
    check(start, "v0");
    TORCH_CHECK(start.numel() == E && start.scalar_type() == currents.scalar_type(),
                "v0 must hold one membrane per neuron");
  }
  AT_DISPATCH_FLOATING_TYPES(currents.scalar_type(), "if_scan_forward", [&] {
    const scalar_t* x = currents.data_ptr<scalar_t>();
    const scalar_t* th = theta.data_ptr<scalar_t>();
    const scalar_t* start_v = start.defined() ? start.data_ptr<scalar_t>() : nullptr;
    scalar_t* sp = want_spikes ? spikes.data_ptr<scalar_t>() : nullptr;
    scalar_t* ct = want_counts ? counts.data_ptr<scalar_t>() : nullptr;
    scalar_t* pt = want_potentials ? potentials.data_ptr<scalar_t>() : nullptr;
    scalar_t* vo = v_out.data_ptr<scalar_t>();
    with_flag(zero, [&](auto Z) { with_flag(constant, [&](auto C) {
      with_flag(want_spikes, [&](auto S) { with_flag(want_counts, [&](auto K) {
        with_flag(want_potentials, [&](auto P) {
          forward_kernel<scalar_t, decltype(Z)::value, decltype(C)::value, decltype(S)::value,
                         decltype(K)::value, decltype(P)::value>(
              x, th, channels, inner, start_v, steps, E, sp, ct, pt, vo);
        }); }); }); }); });
  });
  return {spikes, counts, potentials, v_out};
}

// Returns (grad of the currents: (T, E), or (E) for a constant current, or empty; per-neuron grad
// of the threshold (E) or empty; the gradient of the initial membrane (E)).
// ``surrogate``: one of the Surrogate kinds with its ``gamma``, or kGiven with ``slope`` (T, E).
// ``source`` holds the pre-reset potentials (T, E), or with ``replay`` the forward's currents
// ((T, E), or (E) held for ``steps`` steps) from which the potentials are recomputed, starting
// from ``v0`` (or zero).
std::vector<at::Tensor> backward(const at::Tensor& source, bool replay, int64_t steps,
                                 const c10::optional<at::Tensor>& v0,
                                 const c10::optional<at::Tensor>& slope, int64_t surrogate,
                                 double gamma, const c10::optional<at::Tensor>& grad_spikes,
                                 const c10::optional<at::Tensor>& grad_state,
                                 const at::Tensor& theta, const at::Tensor& inverse,
                                 int64_t channels, int64_t inner, bool zero, bool detached,
                                 bool constant, bool want_x, bool want_theta) {
  check(source, replay ? "currents" : "potentials");
  const int64_t E =
      replay && constant ? source.numel() : source.numel() / std::max<int64_t>(1, steps);
  TORCH_CHECK(E * (replay && constant ? 1 : steps) == source.numel(), "source must be (T, E)");
  at::Tensor start;
  if (v0.has_value() && v0->defined()) {
    start = *v0;
    check(start, "v0");
    TORCH_CHECK(replay && start.numel() == E, "v0 (E) goes with replay");
  }
  TORCH_CHECK(surrogate >= kGiven && surrogate <= kStraightThrough, "unknown surrogate kind");
  at::Tensor given;
  if (surrogate == kGiven) {
    TORCH_CHECK(slope.has_value() && slope->defined(), "a given slope is needed");
    given = *slope;
    check(given, "slope");
    TORCH_CHECK(given.numel() == steps * E, "the slope must be (T, E)");
  }
  check(theta, "theta");
  check(inverse, "inverse");
  auto opts = source.options();
  at::Tensor g = (grad_state.has_value() && grad_state->defined())
                     ? grad_state->contiguous().reshape({E}).clone()
                     : at::zeros({E}, opts);
  at::Tensor gs;
  if (grad_spikes.has_value() && grad_spikes->defined()) {
    gs = grad_spikes->contiguous();
    TORCH_CHECK(gs.numel() == steps * E, "grad_spikes must be (T, E)");
  }
  at::Tensor grad_x = want_x ? (constant ? at::empty({E}, opts) : at::empty({steps, E}, opts))
                             : at::Tensor();
  at::Tensor grad_theta = want_theta ? at::empty({E}, opts) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(source.scalar_type(), "if_scan_backward", [&] {
    const scalar_t* p = replay ? nullptr : source.data_ptr<scalar_t>();
    const scalar_t* x = replay ? source.data_ptr<scalar_t>() : nullptr;
    const scalar_t* start_v = start.defined() ? start.data_ptr<scalar_t>() : nullptr;
    const scalar_t* d = given.defined() ? given.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gsp = gs.defined() ? gs.data_ptr<scalar_t>() : nullptr;
    const scalar_t* th = theta.data_ptr<scalar_t>();
    const scalar_t* inv = inverse.data_ptr<scalar_t>();
    scalar_t* gx = want_x ? grad_x.data_ptr<scalar_t>() : nullptr;
    scalar_t* gt = want_theta ? grad_theta.data_ptr<scalar_t>() : nullptr;
    scalar_t* gio = g.data_ptr<scalar_t>();
    with_flag(zero, [&](auto Z) { with_flag(detached, [&](auto D) {
      with_flag(constant, [&](auto C) { with_flag(gs.defined(), [&](auto G) {
        with_flag(want_x, [&](auto X) { with_flag(want_theta, [&](auto H) {
          backward_kernel<scalar_t, decltype(Z)::value, decltype(D)::value, decltype(C)::value,
                          decltype(G)::value, decltype(X)::value, decltype(H)::value>(
              p, x, start_v, d, gsp, th, inv, channels, inner, steps, E, gio, gx, gt, surrogate,
              static_cast<scalar_t>(gamma));
        }); }); }); }); }); });
  });
  return {grad_x, grad_theta, g};
}

// Calibration's fit (compiler/passes/calibrate_thresholds.py, _layer_sums): for every grid point
// g = (factor_g, shift_g) and channel c, the sums over neurons of rate x target and rate^2, where
// rate is a neuron's spikes per step with threshold theta_g = theta_c * factor_g, every step's
// current raised by theta_g * (shift_g / T), and the membrane starting at v_init * theta_g. One
// pass over the currents for the whole grid (instead of one scan per grid point), with the
// PyTorch code's float32 operations, so the spike counts are identical; the sums are float64.
template <typename T, bool kZero>
SPIKESHIELD_MULTIVERSION void grid_range(const T* __restrict__ currents, bool constant, const T* __restrict__ targets,
                const T* __restrict__ theta, int64_t channels, int64_t inner,
                const T* __restrict__ factors, const T* __restrict__ shifts, int64_t grid,
                T v_init, int64_t steps, int64_t E, int64_t begin, int64_t end,
                double* __restrict__ rate_target, double* __restrict__ rate_rate) {
  std::vector<T> x(steps * kBlock);
  T th[kBlock], th_g[kBlock], add[kBlock], v[kBlock], count[kBlock];
  int64_t run_channel[kBlock], run_length[kBlock];
  const T steps_t = T(steps);
  for (int64_t lo = begin; lo < end; lo += kBlock) {
    const int64_t n = std::min(kBlock, end - lo);
    gather_thresholds(theta, channels, inner, lo, n, th);
    for (int64_t t = 0; t < steps; ++t) {
      const T* src = constant ? currents + lo : currents + t * E + lo;
      for (int64_t i = 0; i < n; ++i) x[t * kBlock + i] = src[i];
    }
    const T* tgt = targets + lo;
    // the block's neurons as runs of one channel each (channel-major layout)
    int64_t runs = 0;
    {
      int64_t c = channels == 1 ? 0 : (lo / inner) % channels, r = lo % inner, i = 0;
      while (i < n) {
        const int64_t length = channels == 1 ? n : std::min(n - i, inner - r);
        run_channel[runs] = c;
        run_length[runs++] = length;
        i += length;
        r = 0;
        if (channels > 1 && ++c == channels) c = 0;
      }
    }
    for (int64_t g = 0; g < grid; ++g) {
      const T factor = factors[g], shift = shifts[g];
      for (int64_t i = 0; i < n; ++i) {
        th_g[i] = th[i] * factor;
        add[i] = th_g[i] * shift;
        v[i] = T(0) + v_init * th_g[i];
        count[i] = T(0);
      }
      for (int64_t t = 0; t < steps; ++t) {
        const T* __restrict__ xt = x.data() + t * kBlock;
        if (shift != T(0)) {
          for (int64_t i = 0; i < n; ++i) {
            const T vi = v[i] + (xt[i] + add[i]);
            const T sp = vi > th_g[i] ? T(1) : T(0);
            count[i] += sp;
            v[i] = kZero ? vi - vi * sp : vi - th_g[i] * sp;
          }
        } else {
          for (int64_t i = 0; i < n; ++i) {
            const T vi = v[i] + xt[i];
            const T sp = vi > th_g[i] ? T(1) : T(0);
            count[i] += sp;
            v[i] = kZero ? vi - vi * sp : vi - th_g[i] * sp;
          }
        }
      }
      double* rt = rate_target + g * channels;
      double* rr = rate_rate + g * channels;
      for (int64_t run = 0, i0 = 0; run < runs; i0 += run_length[run++]) {
        double a = 0, b = 0;
        for (int64_t i = i0; i < i0 + run_length[run]; ++i) {
          const T rate = count[i] / steps_t;
          a += static_cast<double>(rate * tgt[i]);
          b += static_cast<double>(rate * rate);
        }
        rt[run_channel[run]] += a;
        rr[run_channel[run]] += b;
      }
    }
  }
}

// Returns (rate x target sums (G, C), rate^2 sums (G, C)), float64.
std::vector<at::Tensor> grid_sums(const at::Tensor& currents, bool constant, int64_t steps,
                                  const at::Tensor& targets, const at::Tensor& theta,
                                  int64_t channels, int64_t inner, const at::Tensor& factors,
                                  const at::Tensor& shifts, double v_init, bool zero) {
  check(currents, "currents");
  check(targets, "targets");
  check(theta, "theta");
  const int64_t E = targets.numel(), grid = factors.numel();
  TORCH_CHECK(currents.numel() == (constant ? E : steps * E), "currents must be (T, E) or (E)");
  TORCH_CHECK(theta.numel() == channels && shifts.numel() == grid, "theta or shifts mis-sized");
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(),
                                                              (E + kGrain - 1) / kGrain));
  auto sums = at::zeros({2, tasks, grid, channels}, currents.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(currents.scalar_type(), "if_scan_grid_sums", [&] {
    auto f = factors.to(currents.scalar_type()).contiguous();
    auto sh = shifts.to(currents.scalar_type()).contiguous();
    const scalar_t* x = currents.data_ptr<scalar_t>();
    const scalar_t* tg = targets.data_ptr<scalar_t>();
    const scalar_t* th = theta.data_ptr<scalar_t>();
    const scalar_t* fp = f.data_ptr<scalar_t>();
    const scalar_t* sp = sh.data_ptr<scalar_t>();
    double* out = sums.data_ptr<double>();
    const int64_t per_task = (E + tasks - 1) / tasks;
    // one slice of the sums per task, added up in task order: the same result on every run
    at::parallel_for(0, tasks, 1, [&](int64_t first, int64_t last) {
      for (int64_t k = first; k < last; ++k) {
        const int64_t lo = k * per_task, hi = std::min(E, lo + per_task);
        if (lo >= hi) continue;
        auto run = [&](auto Z) {
          grid_range<scalar_t, decltype(Z)::value>(
              x, constant, tg, th, channels, inner, fp, sp, grid, static_cast<scalar_t>(v_init),
              steps, E, lo, hi, out + k * grid * channels, out + (tasks + k) * grid * channels);
        };
        with_flag(zero, run);
      }
    });
  });
  auto total = sums.sum(1);
  return {total[0], total[1]};
}

// ASSG's slope for a scan's potentials (T, E), updating ``mean`` and ``spread`` ((T, E), of the
// potentials' dtype) in place; see assg_range.
at::Tensor assg_slope(const at::Tensor& potentials, const at::Tensor& theta, int64_t channels,
                      int64_t inner, at::Tensor& mean, at::Tensor& spread, int64_t steps,
                      double keep, double relax, double scale, bool fresh) {
  check(potentials, "potentials");
  check(theta, "theta");
  check(mean, "mean");
  check(spread, "spread");
  const int64_t E = potentials.numel() / std::max<int64_t>(1, steps);
  TORCH_CHECK(potentials.numel() == steps * E, "potentials must be (T, E)");
  TORCH_CHECK(mean.numel() == potentials.numel() && spread.numel() == potentials.numel() &&
              mean.scalar_type() == potentials.scalar_type() &&
              spread.scalar_type() == potentials.scalar_type(),
              "mean and spread must be shaped and typed as the potentials");
  TORCH_CHECK(theta.numel() == channels && theta.scalar_type() == potentials.scalar_type(),
              "theta must hold one value per channel, of the potentials' dtype");
  at::Tensor slope = at::empty_like(potentials);
  AT_DISPATCH_FLOATING_TYPES(potentials.scalar_type(), "if_scan_assg_slope", [&] {
    const scalar_t* p = potentials.data_ptr<scalar_t>();
    const scalar_t* th = theta.data_ptr<scalar_t>();
    scalar_t* m = mean.data_ptr<scalar_t>();
    scalar_t* sp = spread.data_ptr<scalar_t>();
    scalar_t* d = slope.data_ptr<scalar_t>();
    // (1 - keep) as Python computes it, then rounded to the tensor's dtype, as PyTorch does
    const scalar_t k = static_cast<scalar_t>(keep), w = static_cast<scalar_t>(1.0 - keep);
    const scalar_t r = static_cast<scalar_t>(relax), a = static_cast<scalar_t>(scale);
    at::parallel_for(0, E, kGrain, [=](int64_t begin, int64_t end) {
      assg_range<scalar_t>(p, th, channels, inner, m, sp, d, steps, E, k, w, r, a, fresh, begin,
                           end);
    });
  });
  return slope;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("grid_sums", &grid_sums, "calibration's fit: rate sums over a grid of thresholds");
  m.def("forward", &forward, "fused IF scan, forward");
  m.def("backward", &backward, "fused IF scan, backward");
  m.def("assg_slope", &assg_slope, "ASSG's moments and slope for a scan's potentials");
}
