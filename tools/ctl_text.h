// kvidxctl's text helpers: table cells from publisher strings, ages, KVBM lineage hashes.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace kvidx::ctl {

// A string from a publisher for a one-line table cell: backslashes, newlines and other control
// bytes escaped, so a request id cannot break the table.
inline std::string Printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20 || c == 0x7f) {
      char b[5];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

inline std::string Age(int64_t ms) {
  if (ms < 0) return "never";
  if (ms < 1000) return std::to_string(ms) + "ms";
  if (ms < 60000) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms / 60000) + "m";
}

// A u128 written as up to 32 hex digits: its 16 big-endian bytes; "" if it is not hex.
inline std::string U128Bytes(const std::string& hex) {
  if (hex.empty() || hex.size() > 32) return "";
  std::string padded = std::string(32 - hex.size(), '0') + hex;
  std::string out;
  for (size_t i = 0; i < 32; i += 2) {
    char* end = nullptr;
    const std::string byte = padded.substr(i, 2);
    const long v = std::strtol(byte.c_str(), &end, 16);
    if (end != byte.c_str() + 2) return "";
    out.push_back(static_cast<char>(v));
  }
  return out;
}

}  // namespace kvidx::ctl
