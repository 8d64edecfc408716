// mscnn-run: Ed25519 signatures of bundles, checked with libsodium
// (crypto_sign_verify_detached), so a device runs only what its owner signed. The key and
// signature files are those deploy/signing.py writes:
//
//   KEY.pub        "mscnn-ed25519-public <64 hex digits>\n"
//   manifest.sig   "mscnn-ed25519-signature <signer's key, 64 hex> <signature, 128 hex>\n"
//
// The signature is over the manifest.json bytes, which hold every file's sha256: it is
// checked on the bytes read, before they are parsed and before any file is hashed.
#ifndef MSCNN_RUN_SIGNATURE_H_
#define MSCNN_RUN_SIGNATURE_H_

#include <optional>
#include <string>

#include "options.h"

namespace mscnn {

// A public key as read from its file.
struct PublicKey {
  std::string raw;          // 32 bytes
  std::string fingerprint;  // the first 16 hex digits of its sha256, as Python prints it
  std::string source;       // the file it came from
};

// The key a package ships beside the runner; with it, the runner runs signed bundles only.
constexpr const char* kTrustedKeyFile = "trusted.pub";

// The key this run trusts: --trust KEY.pub, else trusted.pub beside the runner, else none
// (unsigned bundles run, as before). A Refusal for a file that is not a public key (a
// private key included), a --trust naming another key than the packaged one, or
// --require-signature with no key at all.
std::optional<PublicKey> TrustedKey(const Options& o);

// A Refusal unless the bundle's manifest.sig (under `dir_fd`) is `key`'s signature of
// `manifest`: missing, truncated or padded, malformed, by another key, or not matching.
void VerifyManifest(int dir_fd, const std::string& dir, const std::string& manifest,
                    const PublicKey& key);

// --info's line: unsigned, or by which key, and whether the signature matches.
std::string DescribeSignature(int dir_fd, const std::string& manifest);

}  // namespace mscnn

#endif  // MSCNN_RUN_SIGNATURE_H_
