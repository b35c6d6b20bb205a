// How the pipelined algorithms cut a block of elements into segments: every segment but the
// last holds `per_segment` elements. Sender and receiver cut a block the same way, so each
// segment is one frame whose length both sides know.
#pragma once

#include <algorithm>
#include <cstddef>

namespace rf {

struct Segments {
  size_t first;        // element offset of the block in its buffer
  size_t count;        // elements in the block
  size_t per_segment;  // elements per full segment (> 0)

  size_t size() const { return (count + per_segment - 1) / per_segment; }
  size_t offset(size_t j) const { return first + j * per_segment; }
  size_t length(size_t j) const { return std::min(per_segment, count - j * per_segment); }
};

// Elements per segment for a dtype of elem_bytes: RINGFLOW_SEGMENT_BYTES worth, at least one.
size_t segment_elements(size_t elem_bytes);

}  // namespace rf
