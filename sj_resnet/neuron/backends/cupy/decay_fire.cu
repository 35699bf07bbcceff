// decay_fire.cu -- fused multi-step kernels of the STBP decay-and-fire neuron.
//
// Layout: every sequence tensor is a contiguous [T, n] array (n = N * C * inner neurons per step, channel
// c = (i / inner) % C); v0, v_last, grad_v0 are [n]; decay is [1] (per layer) or [C] (per channel).
// One thread owns V consecutive neurons (V = 1, or the vector width when every pointer is aligned and n % V == 0)
// and walks the whole sequence, so the recurrence never leaves registers.
//
// Forward, per neuron (state type S = float, or double for double inputs):
//     h[t] = decay * v[t-1] + x[t];   o[t] = 1[h[t] >= v_th];   v[t] = h[t] * (1 - o[t])
// writes spike[t] (input type X), h_seq[t] (S), and v_seq[t] (STORE_V_SEQ) or v_last.
//
// Backward (BPTT), t = T-1 .. 0, gh[T] = 0:
//     sg[t]  = surrogate'(h[t] - v_th)
//     a[t]   = (1 - o[t]) - h[t] * sg[t]           (1 - o[t] with DETACH_RESET)
//     gh[t]  = gs[t] * sg[t] + a[t] * (gv[t] + decay * gh[t+1])
//     grad_x[t] = gh[t];  grad_v0 = decay * gh[0];  dL/ddecay = sum_t gh[t] * v[t-1]
// gv[t] is grad_v_seq[t] (STORE_V_SEQ) or grad_v_last at t = T-1 and 0 elsewhere. The decay gradient is
// written as one partial sum per thread (its V neurons, all in one channel) into decay_partial; the host
// reduces that buffer (sum, or per-channel sum), so there are no atomics.
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

namespace sjr {

// ---- types -------------------------------------------------------------------------------------------------
template <typename X> struct State { using type = float; };
template <> struct State<double> { using type = double; };
template <typename X> using state_t = typename State<X>::type;

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

// ---- vector memory access: V elements moved as 16/8/4/2-byte words ------------------------------------------
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
            const W w = reinterpret_cast<const W*>(p)[c];
            memcpy(reinterpret_cast<char*>(out) + c * CHUNK, &w, CHUNK);
        }
    }
    static __device__ __forceinline__ void store(T* __restrict__ p, const T (&in)[V]) {
#pragma unroll
        for (int c = 0; c < BYTES / CHUNK; ++c) {
            W w;
            memcpy(&w, reinterpret_cast<const char*>(in) + c * CHUNK, CHUNK);
            reinterpret_cast<W*>(p)[c] = w;
        }
    }
};

// The decay of the V neurons starting at i0 (they share one channel: the launcher guarantees inner % V == 0
// whenever channels > 1 and V > 1).
template <typename S>
__device__ __forceinline__ S load_decay(const S* __restrict__ decay, long long i0, long long inner, int channels) {
    return channels == 1 ? decay[0] : decay[(i0 / inner) % channels];
}

// ---- forward -----------------------------------------------------------------------------------------------
template <typename X, int V, bool STORE_V_SEQ>
__global__ void __launch_bounds__(SJR_BLOCK, SJR_MIN_BLOCKS) decay_fire_forward(
    const X* __restrict__ x,          // [T, n]
    const state_t<X>* __restrict__ v0,     // [n]
    const state_t<X>* __restrict__ decay,  // [1] or [channels]
    X* __restrict__ spike,            // [T, n]
    state_t<X>* __restrict__ h_seq,   // [T, n]
    state_t<X>* __restrict__ v_out,   // [T, n] (STORE_V_SEQ) or [n]
    state_t<X> v_th, long long n, int T, long long inner, int channels) {
    using S = state_t<X>;
    const long long i0 = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (i0 >= n) return;
    const S d = load_decay(decay, i0, inner, channels);

    S v[V];
    VecIO<S, V>::load(v0 + i0, v);
    X x_next[V];
    VecIO<X, V>::load(x + i0, x_next);
#pragma unroll 1
    for (int t = 0; t < T; ++t) {
        const long long off = (long long)t * n + i0;
        X x_cur[V];
#pragma unroll
        for (int k = 0; k < V; ++k) x_cur[k] = x_next[k];
        if (t + 1 < T) VecIO<X, V>::load(x + off + n, x_next);  // prefetch the next step
        S h[V];
        X s[V];
#pragma unroll
        for (int k = 0; k < V; ++k) {
            h[k] = d * v[k] + to_state(x_cur[k]);
            const bool fire = h[k] >= v_th;
            s[k] = from_state<X>(fire ? S(1) : S(0));
            v[k] = h[k] * (fire ? S(0) : S(1));
        }
        VecIO<S, V>::store(h_seq + off, h);
        VecIO<X, V>::store(spike + off, s);
        if constexpr (STORE_V_SEQ) VecIO<S, V>::store(v_out + off, v);
    }
    if constexpr (!STORE_V_SEQ) VecIO<S, V>::store(v_out + i0, v);
}

// ---- backward ----------------------------------------------------------------------------------------------
template <typename X, int V, int SID, bool DETACH_RESET, bool STORE_V_SEQ>
__global__ void __launch_bounds__(SJR_BLOCK, SJR_MIN_BLOCKS) decay_fire_backward(
    const X* __restrict__ grad_spike,      // [T, n]
    const state_t<X>* __restrict__ grad_v,      // [T, n] (STORE_V_SEQ) or [n] (grad of v_last)
    const state_t<X>* __restrict__ h_seq,       // [T, n]
    const state_t<X>* __restrict__ v0,          // [n]
    const state_t<X>* __restrict__ decay,       // [1] or [channels]
    X* __restrict__ grad_x,                // [T, n]
    state_t<X>* __restrict__ grad_v0,           // [n]
    state_t<X>* __restrict__ decay_partial,     // [n / V] or nullptr (no decay gradient wanted)
    state_t<X> v_th, state_t<X> alpha, long long n, int T, long long inner, int channels) {
    using S = state_t<X>;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long i0 = tid * V;
    if (i0 >= n) return;
    const S d = load_decay(decay, i0, inner, channels);

    S gh[V];      // dL/dh[t+1] while processing step t
    S g_in[V];    // gradient arriving at v[t] from outside: grad_v_last at t = T-1, 0 later (no STORE_V_SEQ)
    if constexpr (!STORE_V_SEQ) {
        VecIO<S, V>::load(grad_v + i0, g_in);
    }
#pragma unroll
    for (int k = 0; k < V; ++k) gh[k] = S(0);
    S acc = S(0);  // sum_t gh[t+1] * v[t] over this thread's neurons

    long long off = (long long)(T - 1) * n + i0;
    X gs_next[V];
    S h_next[V], gv_next[V];
    VecIO<X, V>::load(grad_spike + off, gs_next);
    VecIO<S, V>::load(h_seq + off, h_next);
    if constexpr (STORE_V_SEQ) VecIO<S, V>::load(grad_v + off, gv_next);
#pragma unroll 1
    for (int t = T - 1; t >= 0; --t) {
        X gs[V];
        S h[V], gv[V];
#pragma unroll
        for (int k = 0; k < V; ++k) {
            gs[k] = gs_next[k];
            h[k] = h_next[k];
            if constexpr (STORE_V_SEQ) gv[k] = gv_next[k];
            else gv[k] = g_in[k];
        }
        if (t > 0) {  // prefetch the previous step
            VecIO<X, V>::load(grad_spike + off - n, gs_next);
            VecIO<S, V>::load(h_seq + off - n, h_next);
            if constexpr (STORE_V_SEQ) VecIO<S, V>::load(grad_v + off - n, gv_next);
        }
        X gx[V];
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const S sg = surrogate_grad<SID, S>(h[k] - v_th, alpha);
            const S not_fired = h[k] >= v_th ? S(0) : S(1);
            const S a = DETACH_RESET ? not_fired : not_fired - h[k] * sg;
            acc += gh[k] * (h[k] * not_fired);
            gh[k] = to_state(gs[k]) * sg + a * (gv[k] + d * gh[k]);
            gx[k] = from_state<X>(gh[k]);
            if constexpr (!STORE_V_SEQ) g_in[k] = S(0);
        }
        VecIO<X, V>::store(grad_x + off, gx);
        off -= n;
    }
    S gv0[V];
#pragma unroll
    for (int k = 0; k < V; ++k) gv0[k] = d * gh[k];
    VecIO<S, V>::store(grad_v0 + i0, gv0);
    if (decay_partial != nullptr) {
        S v_init[V];
        VecIO<S, V>::load(v0 + i0, v_init);
#pragma unroll
        for (int k = 0; k < V; ++k) acc += gh[k] * v_init[k];
        decay_partial[tid] = acc;
    }
}

}  // namespace sjr
