#include "ringflow/collectives/collective.h"

namespace rf {

std::vector<size_t> block_offsets(const std::vector<size_t>& sizes) {
  std::vector<size_t> offsets(sizes.size() + 1, 0);
  for (size_t i = 0; i < sizes.size(); ++i) offsets[i + 1] = offsets[i] + sizes[i];
  return offsets;
}

std::vector<size_t> even_blocks(size_t count, int parts) {
  std::vector<size_t> blocks(parts, count / parts);
  for (size_t i = 0; i < count % parts; ++i) ++blocks[i];
  return blocks;
}

}  // namespace rf
