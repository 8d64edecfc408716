"""Cortex-M builds: no OS, no loader. boards.py holds the cores, boards and parts;
aot.py turns a compiled Relax program into C over one static arena; firmware.py builds
the library and the example firmware and proves them under qemu-system-arm; package.py
makes the tarball a firmware engineer receives."""
