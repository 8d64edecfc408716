#include "text.h"

#include <cstdio>

namespace mscnn {

std::size_t Utf8Length(const unsigned char* p, std::size_t avail, unsigned* code_point) {
  if (avail == 0) return 0;
  const unsigned lead = p[0];
  std::size_t length;
  unsigned cp, min;
  if (lead < 0x80) {
    *code_point = lead;
    return 1;
  } else if ((lead & 0xe0) == 0xc0) {
    length = 2, cp = lead & 0x1f, min = 0x80;
  } else if ((lead & 0xf0) == 0xe0) {
    length = 3, cp = lead & 0x0f, min = 0x800;
  } else if ((lead & 0xf8) == 0xf0) {
    length = 4, cp = lead & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (avail < length) return 0;
  for (std::size_t i = 1; i < length; ++i) {
    if ((p[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000)) return 0;
  *code_point = cp;
  return length;
}

std::string Printable(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  std::size_t i = 0;
  char escape[16];
  while (i < text.size()) {
    unsigned cp = 0;
    const std::size_t length = Utf8Length(p + i, text.size() - i, &cp);
    if (length == 0) {
      std::snprintf(escape, sizeof escape, "\\x%02x", unsigned(p[i]));
      out += escape;
      ++i;
      continue;
    }
    if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp < 0x20 || cp == 0x7f) {
      std::snprintf(escape, sizeof escape, "\\x%02x", cp);
      out += escape;
    } else if ((cp >= 0x80 && cp < 0xa0) || cp == 0x2028 || cp == 0x2029) {
      std::snprintf(escape, sizeof escape, "\\u%04x", cp);
      out += escape;
    } else {
      out.append(text, i, length);
    }
    i += length;
  }
  return out;
}

std::string Clip(const std::string& text, std::size_t max) {
  if (text.size() <= max) return text;
  std::size_t cut = max;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xc0) == 0x80) --cut;
  return text.substr(0, cut) + "...";
}

}  // namespace mscnn
