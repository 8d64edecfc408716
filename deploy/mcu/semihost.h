/* Arm semihosting (the debugger, here qemu-system-arm, serves the calls): files on the
 * host, console text and the exit status, with no C library I/O and no heap. */
#ifndef MSCNN_SEMIHOST_H
#define MSCNN_SEMIHOST_H

#include <stddef.h>
#include <stdint.h>

int sh_open(const char* path, int write);              /* handle, or -1 */
long sh_length(int handle);                            /* bytes, or -1 */
size_t sh_read(int handle, void* buf, size_t bytes);   /* bytes read */
size_t sh_write(int handle, const void* buf, size_t bytes); /* bytes written */
int sh_seek(int handle, size_t position);             /* 0, or nonzero on failure */
void sh_close(int handle);
void sh_print(const char* text);                       /* to the host's console */
void sh_print_kv(const char* key, uint32_t value);     /* " key=value" */
__attribute__((noreturn)) void sh_exit(int status);

#endif
