/* A stand-in for the NVIDIA driver library (libcuda.so.1), for build machines without one.
 *
 * TVM 0.27 loads its CUDA runtime (libtvm_runtime_cuda.so, which links libcuda.so.1) at
 * import and silently skips it when that fails; its CUDA codegen then keeps kernel *source*
 * in the library instead of compiling it, and a C++ runtime cannot load the result. With
 * this stub on the library path the runtime loads, and codegen compiles the kernels with
 * NVRTC (no driver needed for that). Every driver call here fails with
 * CUDA_ERROR_NO_DEVICE: the stub is used by the build only and is never shipped.
 */
#define CUDA_ERROR_NO_DEVICE 100

#define NO_DEVICE(name) \
  int name(void) { return CUDA_ERROR_NO_DEVICE; }

NO_DEVICE(cuDeviceGetName)
NO_DEVICE(cuFuncSetAttribute)
NO_DEVICE(cuLaunchKernelEx)
NO_DEVICE(cuModuleGetFunction)
NO_DEVICE(cuModuleLoadData)
NO_DEVICE(cuModuleUnload)
NO_DEVICE(cuTensorMapEncodeTiled)

int cuGetErrorName(int error, const char **text) {
  (void)error;
  if (text) *text = "CUDA_ERROR_NO_DEVICE (mscnn-edge build stub)";
  return 0;
}

int cuGetErrorString(int error, const char **text) {
  (void)error;
  if (text) *text = "no CUDA driver: this is the mscnn-edge build-time stub";
  return 0;
}
