// decay_fire.cu -- fused multi-step kernels of the STBP decay-and-fire neuron.
//
// Layout: every sequence tensor is [T, n] with each step one dense block of n elements (n = N * C * inner
// neurons; any dense non-overlapping order inside a step: contiguous, channels_last, ...). Channel of the
// element at offset i of a step: c = (i / channel_stride) % channels, channel_stride = the stride of the channel
// dimension. v0, v_last, grad_v0 are one step [n]; decay is [1] (per layer) or [channels] (per channel).
// One thread owns V consecutive elements (V = 1, or the vector width when every pointer is aligned and
// n % V == 0) and walks the whole sequence, so the recurrence never leaves registers. Each of its V lanes
// reads the decay of its own channel, so a vector may span channels (channels_last: channel_stride = 1).
//
// Forward, per neuron (state type S = float, or double for double inputs):
//     h[t] = decay * v[t-1] + x[t];   o[t] = 1[h[t] >= v_th];   v[t] = h[t] * (1 - o[t])
// writes spike[t] (input type X); the saved state for backward (SAVE = 0: nothing (inference), 1: h[t] in S,
// 2: d[t] = h[t] - v_th as __half, saturated to +-65504 (never inf), with the sign bit forced to !o[t]);
// v_seq[t] (v_every_step) or v_last.
// v0 == nullptr is the zero state (not read).
//
// Backward (BPTT), t = T-1 .. 0, gh[T] = 0:
//     sg[t]  = surrogate'(h[t] - v_th)
//     a[t]   = (1 - o[t]) - h[t] * sg[t]           (1 - o[t] with DETACH_RESET)
//     gh[t]  = gs[t] * sg[t] + a[t] * (gv[t] + decay * gh[t+1])
//     grad_x[t] = gh[t];  grad_v0 = decay * gh[0];  dL/ddecay = sum_t gh[t] * v[t-1]
// h[t] comes from the saved state (HALF_SAVED: h = v_th + d, o = sign bit of d clear). gs is grad_spike, gv is
// grad_v: every step (gv_every_step) or only t = T-1 (grad of v_last). An incoming gradient is addressed as
// p[t * tstride + i * nstride] with nstride 0 (one value per step, e.g. an expanded ones tensor) or 1, and may
// be nullptr (no gradient: not read). grad_v0 == nullptr: not written. The decay gradient is written as
// partial sums into decay_partial (nullptr: not wanted): one per thread [ceil(n / V)] when its V lanes share one
// channel (per-layer decay, or channel_stride % V == 0), else one per lane [n]; the host reduces that buffer,
// so there are no atomics. v0 is read only for the decay gradient.
//
// Every global access goes through ld/st/VecIO below, which call SJR_ON_LOAD / SJR_ON_STORE: empty for the
// GPU; the host shim (host_shim.cuh) defines them to count the bytes each launch moves.
//
// The same text is compiled by NVRTC at run time (CuPy RawModule), by nvcc in the tests, and by g++ with
// host_shim.cuh to run on the CPU. Keep it free of anything only one of them understands.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include "surrogates.cuh"

#ifndef SJR_BLOCK
#error "compile with -DSJR_BLOCK=<threads per block> (the launcher passes it)"
#endif
#ifndef SJR_MIN_BLOCKS
#define SJR_MIN_BLOCKS 1
#endif
#ifndef SJR_ON_LOAD
#define SJR_ON_LOAD(ptr, bytes)
#endif
#ifndef SJR_ON_STORE
#define SJR_ON_STORE(ptr, bytes)
#endif

#define SJR_SAVE_NONE 0
#define SJR_SAVE_STATE 1
#define SJR_SAVE_HALF 2

namespace sjr {

// ---- types -------------------------------------------------------------------------------------------------
template <typename X> struct State { using type = float; };
template <> struct State<double> { using type = double; };
template <typename X> using state_t = typename State<X>::type;

template <bool B, typename A, typename C> struct Pick { using type = A; };
template <typename A, typename C> struct Pick<false, A, C> { using type = C; };

__device__ __forceinline__ float to_state(float x) { return x; }
__device__ __forceinline__ float to_state(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_state(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ double to_state(double x) { return x; }

template <typename X> __device__ __forceinline__ X from_state(state_t<X> s);
template <> __device__ __forceinline__ float from_state<float>(float s) { return s; }
template <> __device__ __forceinline__ __half from_state<__half>(float s) { return __float2half_rn(s); }
template <> __device__ __forceinline__ __nv_bfloat16 from_state<__nv_bfloat16>(float s) {
    return __float2bfloat16_rn(s);
}
template <> __device__ __forceinline__ double from_state<double>(double s) { return s; }

// d = h - v_th as __half, sign bit = "did not fire" (so -0 and a flushed denormal keep the decision).
// |d| > 65504 (the largest finite half) is saved as +-65504, as the torch backend does: __float2half_rn would
// give +-inf, and h = v_th + inf makes (1 - o) - h * sg NaN in backward. Clamping before rounding equals
// rounding then clamping (every float in (65504, 65520) rounds to 65504); a NaN passes through unchanged.
#define SJR_HALF_MAX 65504.0f
template <typename S>
__device__ __forceinline__ __half encode_half(S diff, bool fire) {
    float f = float(diff);
    if (f > SJR_HALF_MAX) f = SJR_HALF_MAX;
    if (f < -SJR_HALF_MAX) f = -SJR_HALF_MAX;
    __half_raw raw = __float2half_rn(f);
    raw.x = (unsigned short)((raw.x & 0x7fffu) | (fire ? 0u : 0x8000u));
    return __half(raw);
}
__device__ __forceinline__ bool half_fired(__half d) {
    const __half_raw raw = d;
    return (raw.x & 0x8000u) == 0;
}

// ---- global memory access: scalars, and V elements moved as 16/8/4/2-byte words ----------------------------
template <typename T>
__device__ __forceinline__ T ld(const T* __restrict__ p) {
    SJR_ON_LOAD(p, sizeof(T));
    return *p;
}
template <typename T>
__device__ __forceinline__ void st(T* __restrict__ p, T v) {
    SJR_ON_STORE(p, sizeof(T));
    *p = v;
}

template <int BYTES> struct Word;
template <> struct Word<16> { using type = uint4; };
template <> struct Word<8> { using type = uint2; };
template <> struct Word<4> { using type = unsigned int; };
template <> struct Word<2> { using type = unsigned short; };

template <typename T, int V>
struct VecIO {
    static constexpr int BYTES = int(sizeof(T)) * V;
    static constexpr int CHUNK = BYTES < 16 ? BYTES : 16;
    using W = typename Word<CHUNK>::type;
    static_assert(BYTES % CHUNK == 0, "vector size must be a multiple of the word size");

    // p must be aligned to CHUNK bytes (the launcher checks every pointer before choosing V > 1).
    static __device__ __forceinline__ void load(const T* __restrict__ p, T (&out)[V]) {
#pragma unroll
        for (int c = 0; c < BYTES / CHUNK; ++c) {
            const W w = ld(reinterpret_cast<const W*>(p) + c);
            memcpy(reinterpret_cast<char*>(out) + c * CHUNK, &w, CHUNK);
        }
    }
    static __device__ __forceinline__ void store(T* __restrict__ p, const T (&in)[V]) {
#pragma unroll
        for (int c = 0; c < BYTES / CHUNK; ++c) {
            W w;
            memcpy(&w, reinterpret_cast<const char*>(in) + c * CHUNK, CHUNK);
            st(reinterpret_cast<W*>(p) + c, w);
        }
    }
    // p[i0 .. i0 + V) when nstride == 1, else the one value p[0] for all V (an expanded, stride-0 tensor).
    static __device__ __forceinline__ void load_bcast(const T* __restrict__ p, long long i0, int nstride,
                                                      T (&out)[V]) {
        if (nstride) {
            load(p + i0, out);
        } else {
            const T v = ld(p);
#pragma unroll
            for (int k = 0; k < V; ++k) out[k] = v;
        }
    }
};

// The decay of each of the V neurons i0 .. i0 + V - 1: decay[(i / channel_stride) % channels] for element i.
// One 64-bit division per thread; the lanes step through the channels (a step of one element crosses at most
// one channel boundary), so a vector may span channels in any dense layout.
template <typename S, int V>
__device__ __forceinline__ void load_decay(const S* __restrict__ decay, long long i0, long long channel_stride,
                                           int channels, S (&d)[V]) {
    if (channels == 1) {
        const S d0 = ld(decay);
#pragma unroll
        for (int k = 0; k < V; ++k) d[k] = d0;
        return;
    }
    const long long q = i0 / channel_stride;
    long long r = i0 - q * channel_stride;  // position inside the channel's run of channel_stride elements
    int c = int(q % channels);
#pragma unroll
    for (int k = 0; k < V; ++k) {
        d[k] = ld(decay + c);
        if (++r == channel_stride) {
            r = 0;
            if (++c == channels) c = 0;
        }
    }
}

// True when the V lanes of every thread lie in one channel (their decay-gradient partial sums can be added).
template <int V>
__device__ __forceinline__ bool lanes_share_channel(long long channel_stride, int channels) {
    return V == 1 || channels == 1 || channel_stride % V == 0;
}

// ---- forward -----------------------------------------------------------------------------------------------
template <typename X, int V, int SAVE>
__global__ void __launch_bounds__(SJR_BLOCK, SJR_MIN_BLOCKS) decay_fire_forward(
    const X* __restrict__ x,                 // [T, n]
    const state_t<X>* __restrict__ v0,       // [n] or nullptr (zero state)
    const state_t<X>* __restrict__ decay,    // [1] or [channels]
    X* __restrict__ spike,                   // [T, n]
    typename Pick<SAVE == SJR_SAVE_HALF, __half, state_t<X>>::type* __restrict__ saved,  // [T, n]; unused if NONE
    state_t<X>* __restrict__ v_out,          // [T, n] (v_every_step) or [n]
    state_t<X> v_th, long long n, int T, long long channel_stride, int channels, int v_every_step) {
    using S = state_t<X>;
    using Saved = typename Pick<SAVE == SJR_SAVE_HALF, __half, S>::type;
    const long long i0 = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (i0 >= n) return;
    S d[V];
    load_decay(decay, i0, channel_stride, channels, d);

    S v[V];
    if (v0 != nullptr) {
        VecIO<S, V>::load(v0 + i0, v);
    } else {
#pragma unroll
        for (int k = 0; k < V; ++k) v[k] = S(0);
    }
    X x_next[V];
    VecIO<X, V>::load(x + i0, x_next);
#pragma unroll 1
    for (int t = 0; t < T; ++t) {
        const long long off = (long long)t * n + i0;
        X x_cur[V];
#pragma unroll
        for (int k = 0; k < V; ++k) x_cur[k] = x_next[k];
        if (t + 1 < T) VecIO<X, V>::load(x + off + n, x_next);  // prefetch the next step
        Saved sv[V];
        X s[V];
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const S h = d[k] * v[k] + to_state(x_cur[k]);
            const bool fire = h >= v_th;
            s[k] = from_state<X>(fire ? S(1) : S(0));
            v[k] = h * (fire ? S(0) : S(1));
            if constexpr (SAVE == SJR_SAVE_HALF) sv[k] = encode_half(h - v_th, fire);
            else if constexpr (SAVE == SJR_SAVE_STATE) sv[k] = h;
        }
        if constexpr (SAVE != SJR_SAVE_NONE) VecIO<Saved, V>::store(saved + off, sv);
        VecIO<X, V>::store(spike + off, s);
        if (v_every_step) VecIO<S, V>::store(v_out + off, v);
    }
    if (!v_every_step) VecIO<S, V>::store(v_out + i0, v);
}

// ---- backward ----------------------------------------------------------------------------------------------
template <typename X, int V, int SID, bool DETACH_RESET, bool HALF_SAVED>
__global__ void __launch_bounds__(SJR_BLOCK, SJR_MIN_BLOCKS) decay_fire_backward(
    const X* __restrict__ grad_spike,        // [T, n] (strided, see the header) or nullptr
    long long gs_tstride, int gs_nstride,
    const state_t<X>* __restrict__ grad_v,   // [T, n] (gv_every_step) or [n], strided, or nullptr
    long long gv_tstride, int gv_nstride, int gv_every_step,
    const typename Pick<HALF_SAVED, __half, state_t<X>>::type* __restrict__ saved,  // [T, n]
    const state_t<X>* __restrict__ v0,       // [n] or nullptr (zero state); read only for the decay gradient
    const state_t<X>* __restrict__ decay,    // [1] or [channels]
    X* __restrict__ grad_x,                  // [T, n]
    state_t<X>* __restrict__ grad_v0,        // [n] or nullptr (not wanted)
    state_t<X>* __restrict__ decay_partial,  // [ceil(n / V)] or [n] (see the header) or nullptr (not wanted)
    state_t<X> v_th, state_t<X> alpha, long long n, int T, long long channel_stride, int channels) {
    using S = state_t<X>;
    using Saved = typename Pick<HALF_SAVED, __half, S>::type;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long i0 = tid * V;
    if (i0 >= n) return;
    S d[V];
    load_decay(decay, i0, channel_stride, channels, d);

    S gh[V];   // dL/dh[t+1] while processing step t
    S acc[V];  // sum_t gh[t+1] * v[t] per neuron
#pragma unroll
    for (int k = 0; k < V; ++k) gh[k] = acc[k] = S(0);

#pragma unroll 1
    for (int t = T - 1; t >= 0; --t) {
        const long long off = (long long)t * n + i0;
        Saved sv[V];
        VecIO<Saved, V>::load(saved + off, sv);
        X gs[V];
        if (grad_spike != nullptr) VecIO<X, V>::load_bcast(grad_spike + t * gs_tstride, i0, gs_nstride, gs);
        S gv[V];
        const bool has_gv = grad_v != nullptr && (gv_every_step || t == T - 1);
        if (has_gv) VecIO<S, V>::load_bcast(grad_v + (gv_every_step ? t * gv_tstride : 0), i0, gv_nstride, gv);
        X gx[V];
#pragma unroll
        for (int k = 0; k < V; ++k) {
            S h;
            bool fired;
            if constexpr (HALF_SAVED) {
                h = v_th + S(__half2float(sv[k]));
                fired = half_fired(sv[k]);
            } else {
                h = sv[k];
                fired = h >= v_th;
            }
            const S sg = surrogate_grad<SID, S>(h - v_th, alpha);
            const S not_fired = fired ? S(0) : S(1);
            const S a = DETACH_RESET ? not_fired : not_fired - h * sg;
            acc[k] += gh[k] * (h * not_fired);
            S g = d[k] * gh[k];
            if (has_gv) g += gv[k];
            g *= a;
            if (grad_spike != nullptr) g += to_state(gs[k]) * sg;
            gh[k] = g;
            gx[k] = from_state<X>(g);
        }
        VecIO<X, V>::store(grad_x + off, gx);
    }
    if (grad_v0 != nullptr) {
        S gv0[V];
#pragma unroll
        for (int k = 0; k < V; ++k) gv0[k] = d[k] * gh[k];
        VecIO<S, V>::store(grad_v0 + i0, gv0);
    }
    if (decay_partial != nullptr) {
        if (v0 != nullptr) {
            S v_init[V];
            VecIO<S, V>::load(v0 + i0, v_init);
#pragma unroll
            for (int k = 0; k < V; ++k) acc[k] += gh[k] * v_init[k];
        }
        if (lanes_share_channel<V>(channel_stride, channels)) {
            S sum = acc[0];
#pragma unroll
            for (int k = 1; k < V; ++k) sum += acc[k];
            st(decay_partial + tid, sum);
        } else {
            VecIO<S, V>::store(decay_partial + i0, acc);
        }
    }
}

}  // namespace sjr
