// The CUDA kernels of se_backward_cuda.cu compiled as host C++ for the emulator.
#include "../se_backward_cuda.cu"
