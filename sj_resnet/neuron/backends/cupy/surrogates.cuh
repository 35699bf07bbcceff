// surrogates.cuh -- the CUDA twin of sj_resnet/neuron/surrogates.py.
//
// sg(x; a) is the surrogate derivative of SpikingJelly's heaviside at x = h - v_threshold, one device
// function per row of the Python table (same ids, same formulas, same operation order):
//
//   id  SpikingJelly class     sg(x; a)
//   0   Rect                   a * 1[|x| < 1/(2a)]
//   1   Sigmoid                a * s * (1 - s),             s = sigmoid(a x)
//   2   ATan                   (a/2) / (1 + (pi/2 * a x)^2)
//   3   PiecewiseQuadratic     (a - a^2 |x|) * 1[|x| <= 1/a]
//   4   PiecewiseExp           (a/2) * exp(-a |x|)
//   5   SoftSign               1 / (2a (1/a + |x|)^2)
//   6   SuperSpike             a / (1 + |x|)^2
//   7   Erf                    (a / sqrt(pi)) * exp(-(a x)^2)
//
// S is the state type (float, or double for float64 inputs). The tests check these functions against the
// Python table (tests/kernels) and the ids against surrogates.SURROGATES.
#pragma once

#define SJR_SURROGATE_RECT 0
#define SJR_SURROGATE_SIGMOID 1
#define SJR_SURROGATE_ATAN 2
#define SJR_SURROGATE_PIECEWISE_QUADRATIC 3
#define SJR_SURROGATE_PIECEWISE_EXP 4
#define SJR_SURROGATE_SOFT_SIGN 5
#define SJR_SURROGATE_SUPER_SPIKE 6
#define SJR_SURROGATE_ERF 7
#define SJR_NUM_SURROGATES 8

namespace sjr {

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float abs_(float x) { return fabsf(x); }
__device__ __forceinline__ double abs_(double x) { return fabs(x); }

// sg(x; a) for surrogate SID. Every branch is a select, so a warp never diverges here.
template <int SID, typename S>
__device__ __forceinline__ S surrogate_grad(S x, S a) {
    static_assert(SID >= 0 && SID < SJR_NUM_SURROGATES, "unknown surrogate id");
    if constexpr (SID == SJR_SURROGATE_RECT) {
        return abs_(x) < S(0.5) / a ? a : S(0);
    } else if constexpr (SID == SJR_SURROGATE_SIGMOID) {
        const S s = S(1) / (S(1) + exp_(-(x * a)));
        return s * (S(1) - s) * a;
    } else if constexpr (SID == SJR_SURROGATE_ATAN) {
        const S ax = x * (S(1.5707963267948966) * a);
        return (a / S(2)) / (S(1) + ax * ax);
    } else if constexpr (SID == SJR_SURROGATE_PIECEWISE_QUADRATIC) {
        const S ax = abs_(x);
        return ax > S(1) / a ? S(0) : a - a * a * ax;
    } else if constexpr (SID == SJR_SURROGATE_PIECEWISE_EXP) {
        return exp_(abs_(x) * -a) * (a / S(2));
    } else if constexpr (SID == SJR_SURROGATE_SOFT_SIGN) {
        const S d = abs_(x) + S(1) / a;
        return S(1) / (S(2) * a * d * d);
    } else if constexpr (SID == SJR_SURROGATE_SUPER_SPIKE) {
        const S d = abs_(x) + S(1);
        return a / (d * d);
    } else {  // SJR_SURROGATE_ERF
        const S ax = x * a;
        return exp_(-(ax * ax)) * (a * S(0.5641895835477563));  // a / sqrt(pi)
    }
}

}  // namespace sjr
