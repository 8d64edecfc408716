/* The few runtime pieces TVM's compiled kernels and the generated entry point need on a
 * microcontroller: the tensor descriptor and argument types of TVM's packed calling
 * convention (their 32-bit ARM EABI layout, checked below), the error hook the kernels
 * call, and a static workspace pool. No heap, no OS, no C++ runtime. */
#ifndef MSCNN_RT_H
#define MSCNN_RT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* DLPack's DLTensor, as TVM's kernels read it (data, device, ndim, dtype, shape,
 * strides, byte_offset). Descriptors are const: kernels only read them. */
typedef struct {
  void* data;
  int32_t device_type; /* 1: CPU */
  int32_t device_id;
  int32_t ndim;
  uint8_t dtype_code; /* 0 int, 1 uint, 2 float */
  uint8_t dtype_bits;
  uint16_t dtype_lanes;
  const int64_t* shape;
  const int64_t* strides; /* NULL: compact row-major */
  uint64_t byte_offset;
} mscnn_tensor_t;

/* TVM FFI's TVMFFIAny: a type index and an 8-byte value. */
typedef struct {
  int32_t type_index; /* 7: DLTensor pointer */
  uint32_t zero_padding;
  union {
    int64_t v_int64;
    double v_float64;
    const void* v_ptr;
  } v;
} mscnn_any_t;

#define MSCNN_ANY_TENSOR 7

/* A kernel's packed entry: 0 on success, -1 after reporting through the error hook. */
typedef int32_t (*mscnn_kernel_t)(void* self, const mscnn_any_t* args, int32_t num_args,
                                  mscnn_any_t* result);

_Static_assert(offsetof(mscnn_tensor_t, shape) == 20, "DLTensor layout (32-bit EABI)");
_Static_assert(offsetof(mscnn_tensor_t, byte_offset) == 32, "DLTensor layout (32-bit EABI)");
_Static_assert(sizeof(mscnn_any_t) == 16, "TVMFFIAny layout");
_Static_assert(offsetof(mscnn_any_t, v) == 8, "TVMFFIAny layout");

/* Error codes of the generated entry points (model.h repeats them for users). */
#ifndef MSCNN_OK
#define MSCNN_OK 0          /* success */
#define MSCNN_E_LENGTH 1    /* the input does not have the model's length */
#define MSCNN_E_NONFINITE 2 /* the input holds NaN or Inf */
#define MSCNN_E_KERNEL 3    /* a kernel refused its arguments (see mscnn_last_error) */
#define MSCNN_E_OUTPUT 4    /* the caller's output buffer is too small */
#endif

/* The last kernel error's message ("" if none); cleared by mscnn_clear_error. */
const char* mscnn_last_error(void);
void mscnn_clear_error(void);

/* Called by kernels (TVM FFI's name and signature). */
void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n);

#ifdef __cplusplus
}
#endif
#endif
