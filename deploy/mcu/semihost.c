/* Arm semihosting calls (ARM IHI 0045 / "Semihosting for AArch32 and AArch64"): a
 * `bkpt 0xab` with the operation in r0 and a pointer to its arguments in r1. */
#include "semihost.h"

enum {
  SYS_OPEN = 0x01,
  SYS_CLOSE = 0x02,
  SYS_WRITE0 = 0x04,
  SYS_WRITE = 0x05,
  SYS_READ = 0x06,
  SYS_SEEK = 0x0a,
  SYS_FLEN = 0x0c,
  SYS_EXIT_EXTENDED = 0x20,
  ADP_STOPPED_APPLICATION_EXIT = 0x20026,
};

static int call(int op, const void* args) {
  register int r0 __asm__("r0") = op;
  register const void* r1 __asm__("r1") = args;
  __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

static size_t length_of(const char* s) {
  size_t n = 0;
  while (s[n] != '\0') ++n;
  return n;
}

int sh_open(const char* path, int write) {
  const uintptr_t args[3] = {(uintptr_t)path, write ? 5u : 1u, length_of(path)}; /* wb, rb */
  return call(SYS_OPEN, args);
}

long sh_length(int handle) {
  const uintptr_t args[1] = {(uintptr_t)handle};
  return call(SYS_FLEN, args);
}

size_t sh_read(int handle, void* buf, size_t bytes) {
  const uintptr_t args[3] = {(uintptr_t)handle, (uintptr_t)buf, bytes};
  return bytes - (size_t)call(SYS_READ, args); /* the call returns the bytes NOT read */
}

size_t sh_write(int handle, const void* buf, size_t bytes) {
  const uintptr_t args[3] = {(uintptr_t)handle, (uintptr_t)buf, bytes};
  return bytes - (size_t)call(SYS_WRITE, args);
}

int sh_seek(int handle, size_t position) {
  const uintptr_t args[2] = {(uintptr_t)handle, position};
  return call(SYS_SEEK, args);
}

void sh_close(int handle) {
  const uintptr_t args[1] = {(uintptr_t)handle};
  call(SYS_CLOSE, args);
}

void sh_print(const char* text) { call(SYS_WRITE0, text); }

void sh_print_kv(const char* key, uint32_t value) {
  char digits[12];
  int i = (int)sizeof digits - 1;
  digits[i] = '\0';
  do {
    digits[--i] = (char)('0' + value % 10u);
    value /= 10u;
  } while (value != 0u && i > 0);
  sh_print(" ");
  sh_print(key);
  sh_print("=");
  sh_print(digits + i);
}

void sh_exit(int status) {
  const uintptr_t args[2] = {ADP_STOPPED_APPLICATION_EXIT, (uintptr_t)status};
  call(SYS_EXIT_EXTENDED, args);
  for (;;) {
  }
}
