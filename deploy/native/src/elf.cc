#include "elf.h"

#include <string>
#include <vector>

#include "io.h"
#include "refusal.h"

namespace mscnn {
namespace {

constexpr const char* kRebuild = "rebuild the bundle with `python -m compile build`";

// ELF identification of the machines a bundle can target: e_machine and word size.
struct ElfKind {
  const char* arch;
  unsigned machine;
  unsigned elf_class;  // 1: 32-bit, 2: 64-bit
};
constexpr ElfKind kElfKinds[] = {{"x86_64", 62, 2}, {"aarch64", 183, 2}, {"armv7", 40, 1}};

const char* ArchOfElf(std::uint64_t machine, unsigned elf_class) {
  for (const ElfKind& kind : kElfKinds) {
    if (kind.machine == machine && kind.elf_class == elf_class) return kind.arch;
  }
  return nullptr;
}

// An unsigned field of `width` bytes at `at`, in the file's byte order.
std::uint64_t Field(const std::vector<unsigned char>& b, std::size_t at, int width, bool big) {
  std::uint64_t value = 0;
  for (int i = 0; i < width; ++i) {
    value |= std::uint64_t(b[at + std::size_t(i)]) << (8 * (big ? width - 1 - i : i));
  }
  return value;
}

// Offsets of the fields read here, per ELF class (32-bit, 64-bit).
struct Layout {
  std::size_t header_size, phoff_at, phentsize_at, phnum_at, entry_size;
  std::size_t p_offset_at, p_filesz_at;
  int word;
};
constexpr Layout kLayout32{52, 28, 42, 44, 32, 4, 16, 4};
constexpr Layout kLayout64{64, 32, 54, 56, 56, 8, 32, 8};

}  // namespace

void CheckElfLibrary(int fd, std::uint64_t size, const std::string& runner_arch,
                     const std::string& label) {
  std::vector<unsigned char> head(std::size_t(size < 64 ? size : 64));
  ReadExactly(fd, 0, head.data(), head.size(), label);
  const bool elf = head.size() >= 20 && head[0] == 0x7f && head[1] == 'E' &&
                   head[2] == 'L' && head[3] == 'F' && (head[4] == 1 || head[4] == 2) &&
                   (head[5] == 1 || head[5] == 2);
  if (!elf) throw Refusal(label + " is not an ELF shared library; " + kRebuild);
  const bool big = head[5] == 2;
  const unsigned elf_class = head[4];
  const std::uint64_t machine = Field(head, 18, 2, big);
  const char* arch = ArchOfElf(machine, elf_class);
  if (arch == nullptr || runner_arch != arch) {
    throw Refusal(label + " is code for " +
                  (arch ? std::string(arch) : "ELF machine " + std::to_string(machine)) +
                  ", not for " + runner_arch + " as this mscnn-run; " + kRebuild +
                  " for the right target");
  }
  const Layout& l = elf_class == 2 ? kLayout64 : kLayout32;
  const auto corrupt = [&](const std::string& what) {
    return Refusal(label + " is truncated or corrupt: " + what + " (the file holds " +
                   std::to_string(size) + " bytes); copy the bundle again or " + kRebuild);
  };
  if (head.size() < l.header_size) throw corrupt("its ELF header is cut short");
  if (Field(head, 16, 2, big) != 3) {  // e_type ET_DYN
    throw Refusal(label + " is not an ELF shared library; " + kRebuild);
  }
  const std::uint64_t phoff = Field(head, l.phoff_at, l.word, big);
  const std::uint64_t entsize = Field(head, l.phentsize_at, 2, big);
  const std::uint64_t count = Field(head, l.phnum_at, 2, big);
  if (entsize < l.entry_size || count == 0 || count == 0xffff || phoff > size ||
      entsize * count > size - phoff) {
    throw corrupt("its program headers lie outside the file");
  }
  std::vector<unsigned char> table(std::size_t(entsize * count));
  ReadExactly(fd, phoff, table.data(), table.size(), label);
  for (std::uint64_t k = 0; k < count; ++k) {
    const std::size_t at = std::size_t(k * entsize);
    if (Field(table, at, 4, big) == 0) continue;  // PT_NULL maps nothing
    const std::uint64_t offset = Field(table, at + l.p_offset_at, l.word, big);
    const std::uint64_t filesz = Field(table, at + l.p_filesz_at, l.word, big);
    if (offset > size) {
      throw corrupt("segment " + std::to_string(k) + " starts at byte " + std::to_string(offset) +
                    ", past the end of the file");
    }
    if (filesz > size - offset) {
      throw corrupt("segment " + std::to_string(k) + " ends past the end of the file, at byte " +
                    std::to_string(offset) + " + " + std::to_string(filesz));
    }
  }
}

}  // namespace mscnn
