// Reads the hand-written payloads of tests/data/*.hex: hex byte pairs, '#' starts a comment.
#pragma once

#include <cstdint>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvidx::testing {

inline std::vector<uint8_t> ReadHexFile(const std::string& name) {
  std::ifstream in(std::string(KVIDX_SOURCE_ROOT) + "/tests/data/" + name);
  if (!in) throw std::runtime_error("missing test data " + name);
  std::vector<uint8_t> out;
  std::string line;
  while (std::getline(in, line)) {
    line = line.substr(0, line.find('#'));
    std::istringstream toks(line);
    std::string tok;
    while (toks >> tok) out.push_back(static_cast<uint8_t>(std::stoul(tok, nullptr, 16)));
  }
  return out;
}

}  // namespace kvidx::testing
