// Serializer specialisations for the armv7 TVM runtime build (see io.h for the format).
#ifndef MSCNN_NATIVE_TVM_SUPPORT_SERIALIZER_H_
#define MSCNN_NATIVE_TVM_SUPPORT_SERIALIZER_H_

#include <dlpack/dlpack.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <cstdint>
#include <map>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the TVM stream format is little-endian; a big-endian host would need byte swaps"
#endif

namespace tvm {
namespace support {

// Scalars go out as their in-memory bytes. std::size_t is deliberately not special:
// every count in the format is written as an explicit uint64_t by the caller.
template <typename T>
struct Serializer<T, std::enable_if_t<std::is_arithmetic<T>::value || std::is_enum<T>::value>> {
  static constexpr bool enabled = true;
  static constexpr bool kRaw = true;
  static void Write(Stream* strm, const T& value) { strm->Write(&value, sizeof(T)); }
  static bool Read(Stream* strm, T* out) { return strm->Read(out, sizeof(T)) == sizeof(T); }
};

// DLPack structs field by field: their layout is fixed by the format, not by the ABI
// (an enum's width is up to the compiler).
template <>
struct Serializer<DLDataType> {
  static constexpr bool enabled = true;
  static constexpr bool kRaw = false;
  static void Write(Stream* strm, const DLDataType& dtype) {
    strm->Write<std::uint8_t>(dtype.code);
    strm->Write<std::uint8_t>(dtype.bits);
    strm->Write<std::uint16_t>(dtype.lanes);
  }
  static bool Read(Stream* strm, DLDataType* dtype) {
    std::uint8_t code, bits;
    std::uint16_t lanes;
    if (!strm->Read(&code) || !strm->Read(&bits) || !strm->Read(&lanes)) return false;
    dtype->code = code;
    dtype->bits = bits;
    dtype->lanes = lanes;
    return true;
  }
};

template <>
struct Serializer<DLDevice> {
  static constexpr bool enabled = true;
  static constexpr bool kRaw = false;
  static void Write(Stream* strm, const DLDevice& dev) {
    strm->Write<std::int32_t>(static_cast<std::int32_t>(dev.device_type));
    strm->Write<std::int32_t>(dev.device_id);
  }
  static bool Read(Stream* strm, DLDevice* dev) {
    std::int32_t type, id;
    if (!strm->Read(&type) || !strm->Read(&id)) return false;
    dev->device_type = static_cast<DLDeviceType>(type);
    dev->device_id = id;
    return true;
  }
};

namespace detail {

template <typename T, typename = void>
struct IsRaw : std::false_type {};
template <typename T>
struct IsRaw<T, std::enable_if_t<Serializer<T>::kRaw>> : std::true_type {};

inline bool ReadCount(Stream* strm, std::uint64_t* count) { return strm->Read(count); }

}  // namespace detail

template <>
struct Serializer<std::string> {
  static constexpr bool enabled = true;
  static constexpr bool kRaw = false;
  static void Write(Stream* strm, const std::string& s) {
    strm->Write<std::uint64_t>(s.size());
    if (!s.empty()) strm->Write(s.data(), s.size());
  }
  static bool Read(Stream* strm, std::string* s) {
    std::uint64_t size;
    if (!detail::ReadCount(strm, &size)) return false;
    s->resize(static_cast<std::size_t>(size));
    return size == 0 || strm->Read(&(*s)[0], s->size()) == s->size();
  }
};

template <>
struct Serializer<ffi::String> {
  static constexpr bool enabled = true;
  static constexpr bool kRaw = false;
  static void Write(Stream* strm, const ffi::String& s) {
    strm->Write<std::uint64_t>(s.size());
    if (s.size() != 0) strm->Write(s.data(), s.size());
  }
  static bool Read(Stream* strm, ffi::String* s) {
    std::string text;
    if (!Serializer<std::string>::Read(strm, &text)) return false;
    *s = ffi::String(std::move(text));
    return true;
  }
};

template <typename T>
struct Serializer<std::vector<T>> {
  static constexpr bool enabled = true;
  static constexpr bool kRaw = false;
  static void Write(Stream* strm, const std::vector<T>& v) {
    strm->Write<std::uint64_t>(v.size());
    strm->WriteArray(v.data(), v.size());
  }
  static bool Read(Stream* strm, std::vector<T>* v) {
    std::uint64_t size;
    if (!detail::ReadCount(strm, &size)) return false;
    v->resize(static_cast<std::size_t>(size));
    return strm->ReadArray(v->data(), v->size());
  }
};

template <typename T>
struct Serializer<ffi::Array<T>> {
  static constexpr bool enabled = true;
  static constexpr bool kRaw = false;
  static void Write(Stream* strm, const ffi::Array<T>& a) {
    strm->Write<std::uint64_t>(a.size());
    for (const T& item : a) Serializer<T>::Write(strm, item);
  }
  static bool Read(Stream* strm, ffi::Array<T>* a) {
    std::uint64_t size;
    if (!detail::ReadCount(strm, &size)) return false;
    ffi::Array<T> out;
    for (std::uint64_t i = 0; i < size; ++i) {
      T item;
      if (!Serializer<T>::Read(strm, &item)) return false;
      out.push_back(std::move(item));
    }
    *a = std::move(out);
    return true;
  }
};

template <typename A, typename B>
struct Serializer<std::pair<A, B>> {
  static constexpr bool enabled = true;
  static constexpr bool kRaw = false;
  static void Write(Stream* strm, const std::pair<A, B>& p) {
    Serializer<A>::Write(strm, p.first);
    Serializer<B>::Write(strm, p.second);
  }
  static bool Read(Stream* strm, std::pair<A, B>* p) {
    return Serializer<A>::Read(strm, &p->first) && Serializer<B>::Read(strm, &p->second);
  }
};

// Maps travel as a counted sequence of (key, value) pairs.
template <typename Map>
struct MapSerializer {
  static constexpr bool enabled = true;
  static constexpr bool kRaw = false;
  using Key = typename Map::key_type;
  using Value = typename Map::mapped_type;
  static void Write(Stream* strm, const Map& m) {
    strm->Write<std::uint64_t>(m.size());
    for (const auto& kv : m) {
      Serializer<Key>::Write(strm, kv.first);
      Serializer<Value>::Write(strm, kv.second);
    }
  }
  static bool Read(Stream* strm, Map* m) {
    std::uint64_t size;
    if (!detail::ReadCount(strm, &size)) return false;
    m->clear();
    for (std::uint64_t i = 0; i < size; ++i) {
      std::pair<Key, Value> kv;
      if (!Serializer<std::pair<Key, Value>>::Read(strm, &kv)) return false;
      m->emplace(std::move(kv));
    }
    return true;
  }
};
template <typename K, typename V, typename... Rest>
struct Serializer<std::map<K, V, Rest...>> : MapSerializer<std::map<K, V, Rest...>> {};
template <typename K, typename V, typename... Rest>
struct Serializer<std::unordered_map<K, V, Rest...>>
    : MapSerializer<std::unordered_map<K, V, Rest...>> {};

template <typename T>
void Stream::WriteArray(const T* data, std::size_t count) {
  if (count == 0) return;
  if constexpr (detail::IsRaw<T>::value) {
    Write(static_cast<const void*>(data), sizeof(T) * count);
  } else {
    for (std::size_t i = 0; i < count; ++i) Serializer<T>::Write(this, data[i]);
  }
}

template <typename T>
bool Stream::ReadArray(T* data, std::size_t count) {
  if (count == 0) return true;
  if constexpr (detail::IsRaw<T>::value) {
    return Read(static_cast<void*>(data), sizeof(T) * count) == sizeof(T) * count;
  } else {
    for (std::size_t i = 0; i < count; ++i) {
      if (!Serializer<T>::Read(this, data + i)) return false;
    }
    return true;
  }
}

}  // namespace support
}  // namespace tvm

#endif  // MSCNN_NATIVE_TVM_SUPPORT_SERIALIZER_H_
