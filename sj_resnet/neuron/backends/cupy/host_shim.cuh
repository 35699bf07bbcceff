// host_shim.cuh -- lets a host C++ compiler (g++) build decay_fire.cu unmodified and run its kernels on the CPU.
//
// Used only by the tests (tests/kernels): include this, then decay_fire.cu, then call
// sjr_host::launch(&kernel<...>, grid, block, params) which runs every (block, thread) of a 1-D..3-D grid in
// order, exactly as cuLaunchKernel would run them (params is cuLaunchKernel's kernelParams: one pointer per
// argument). Kernels that use __syncthreads, shared memory or warp intrinsics cannot run this way; the
// decay-and-fire kernels use none of them on purpose (one thread per neuron, no inter-thread communication).
//
// Byte counting: decay_fire.cu routes every global load/store through SJR_ON_LOAD/SJR_ON_STORE, defined here to
// append (address, bytes, is_store) to sjr_host::traffic_log while sjr_host::traffic_enabled is set. The test
// library exports the log (kernel_host.py), so a host run of the unmodified kernel text reports exactly which
// bytes each launch read and wrote.
//
// __half / __nv_bfloat16 come from NVIDIA's own cuda_fp16.h / cuda_bf16.h, whose conversions are host-callable;
// those headers also define __device__/__global__/__forceinline__ for a host compiler.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstring>
#include <type_traits>
#include <cstdint>
#include <utility>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>

#ifdef __CUDACC__
#error "host_shim.cuh is for host compilers only"
#endif

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

namespace sjr_host {
struct Access {
    std::uintptr_t address;
    std::uint32_t bytes;
    std::uint32_t is_store;
};
inline std::vector<Access> traffic_log;
inline bool traffic_enabled = false;
inline void record(const void* p, std::size_t bytes, bool is_store) {
    if (traffic_enabled)
        traffic_log.push_back({reinterpret_cast<std::uintptr_t>(p), static_cast<std::uint32_t>(bytes), is_store});
}
}  // namespace sjr_host

#define SJR_ON_LOAD(ptr, bytes) ::sjr_host::record((ptr), (bytes), false)
#define SJR_ON_STORE(ptr, bytes) ::sjr_host::record((ptr), (bytes), true)

// The built-in thread coordinates, one copy per host thread.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

// Device-only math the kernels use: host libm has expf/exp/fabsf/fabs already.
using std::exp;
using std::fabs;

namespace sjr_host {

template <typename... A, std::size_t... I>
inline void call_with_params(void (*kernel)(A...), void** params, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(params[I])...);
}

// Run kernel<<<grid, block>>>(*params[0], *params[1], ...) serially on this host thread.
template <typename... A>
inline void launch(void (*kernel)(A...), dim3 grid, dim3 block, void** params) {
    gridDim = grid;
    blockDim = block;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx)
                for (unsigned tz = 0; tz < block.z; ++tz)
                    for (unsigned ty = 0; ty < block.y; ++ty)
                        for (unsigned tx = 0; tx < block.x; ++tx) {
                            blockIdx = make_uint3(bx, by, bz);
                            threadIdx = make_uint3(tx, ty, tz);
                            call_with_params(kernel, params, std::index_sequence_for<A...>{});
                        }
}

}  // namespace sjr_host
