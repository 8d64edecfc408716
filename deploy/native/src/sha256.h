// SHA-256 (FIPS 180-4), so bundle verification needs no crypto library on the device.
#ifndef MSCNN_RUN_SHA256_H_
#define MSCNN_RUN_SHA256_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace mscnn {

class Sha256 {
 public:
  Sha256();
  void Update(const void* data, std::size_t size);
  // Lower-case hex digest; the object must not be updated afterwards.
  std::string HexDigest();

 private:
  void Compress(const std::uint8_t* block);

  std::uint32_t state_[8];
  std::uint8_t block_[64];
  std::size_t block_used_ = 0;
  std::uint64_t total_bytes_ = 0;
};

}  // namespace mscnn

#endif  // MSCNN_RUN_SHA256_H_
