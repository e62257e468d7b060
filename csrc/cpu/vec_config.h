// Selects the at::vec instruction set for a CPU kernel translation unit.
//
// Include this FIRST, before any ATen header. libtorch compiles its own kernels once
// per ISA and dispatches at run time; an extension only gets vector code if it
// defines CPU_CAPABILITY_* itself. We derive it from the flags the TU is compiled
// with (setup.py passes -march=native unless GCT_FUSED_CPU_ARCH says otherwise) and
// name the inline namespace after ourselves so that our instantiations of
// at::vec templates never collide with libtorch's at link or load time.
#pragma once

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define CPU_CAPABILITY_AVX512 1
#define CPU_CAPABILITY gct_fused_avx512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY_AVX2 1
#define CPU_CAPABILITY gct_fused_avx2
#else
#define CPU_CAPABILITY gct_fused_default
#endif
