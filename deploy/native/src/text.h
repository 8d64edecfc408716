// mscnn-run: text that goes to a terminal or a log: one line, whatever the bundle holds.
#ifndef MSCNN_RUN_TEXT_H_
#define MSCNN_RUN_TEXT_H_

#include <cstddef>
#include <string>

namespace mscnn {

// Length of the valid UTF-8 sequence at `p` (1 to 4 bytes), or 0 if it is not one
// (overlong forms, surrogates and code points past U+10FFFF are not).
std::size_t Utf8Length(const unsigned char* p, std::size_t avail, unsigned* code_point);

// `text` with every character that could end or rewrite a line escaped: C0 and C1
// controls, DEL, U+2028/U+2029 as \n, \t, \xNN or \uNNNN, and bytes that are not UTF-8
// as \xNN. A manifest string quoted in a message cannot forge a second `error:` line.
std::string Printable(const std::string& text);

// At most `max` bytes of `text` (cut at a character boundary, "..." appended): a value
// from the manifest quoted in a message keeps the message short, whatever its size.
std::string Clip(const std::string& text, std::size_t max = 100);

}  // namespace mscnn

#endif  // MSCNN_RUN_TEXT_H_
