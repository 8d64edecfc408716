/* Runtime symbols TVM's kernels reference, for a bare-metal build (see mscnn_rt.h).
 *
 * - TVMFFIErrorSetRaisedFromCStrParts: a kernel that refuses its arguments calls it and
 *   returns -1; we keep the message (bounded, no allocation) and the entry point
 *   returns MSCNN_E_KERNEL.
 * - __TVMBackendAllocWorkspace / __TVMBackendFreeWorkspace: function pointers LLVM-built
 *   kernels call for scratch buffers too big for the stack (TVM's loader fills them in
 *   on Linux). Ours hand out a static pool, last in first out, sized by the build
 *   (mscnn_workspace_pool in model.c).
 * - __aeabi_unwind_cpp_pr0: referenced by the kernels' ARM exception-index tables.
 *   Nothing here unwinds (no C++ exceptions), so it is never called. */
#include "mscnn_rt.h"

#define MSCNN_ERROR_CHARS 160

static char error_text[MSCNN_ERROR_CHARS];

static size_t append(size_t at, const char* s) {
  while (s != NULL && *s != '\0' && at + 1 < MSCNN_ERROR_CHARS) error_text[at++] = *s++;
  error_text[at] = '\0';
  return at;
}

void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n) {
  size_t at = append(0, kind);
  at = append(at, ": ");
  for (int32_t i = 0; i < n; ++i) at = append(at, parts[i]);
}

const char* mscnn_last_error(void) { return error_text; }

void mscnn_clear_error(void) { error_text[0] = '\0'; }

/* The workspace pool: the generated model.c defines it with the size its kernels need
 * (possibly 0). Allocation is a bump pointer; frees come in reverse order (TVM frees a
 * kernel's scratch buffers before it returns, innermost first). */
extern uint8_t mscnn_workspace_pool[];
extern const size_t mscnn_workspace_bytes;
static size_t workspace_top;

static void* alloc_workspace(int device_type, int device_id, uint64_t nbytes, int code,
                             int bits) {
  (void)device_type, (void)device_id, (void)code, (void)bits;
  size_t size = (size_t)((nbytes + 63u) & ~(uint64_t)63u);
  if (nbytes > mscnn_workspace_bytes || size > mscnn_workspace_bytes - workspace_top) {
    const char* parts[] = {"kernel workspace exhausted (model.c: mscnn_workspace_pool)"};
    TVMFFIErrorSetRaisedFromCStrParts("MemoryError", parts, 1);
    return NULL;
  }
  void* p = mscnn_workspace_pool + workspace_top;
  workspace_top += size;
  return p;
}

static int free_workspace(int device_type, int device_id, void* ptr) {
  (void)device_type, (void)device_id;
  size_t at = (size_t)((uint8_t*)ptr - mscnn_workspace_pool);
  if (at <= workspace_top) workspace_top = at;
  return 0;
}

void* (*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int) = alloc_workspace;
int (*__TVMBackendFreeWorkspace)(int, int, void*) = free_workspace;

void __aeabi_unwind_cpp_pr0(void) {}
