// A Lookup's matches as the answer carries them: one PodMatch (with its freshness) per match,
// or, for a columnar call, parallel arrays per result and each pod once per call.
#include "query/service.h"
#include "shared/clock.h"
#include "wire/lineage_hash.h"

namespace kvidx::query {
namespace {

// What decides the best pod of a result.
struct Rank {
  bool trusted;  // its stream is whole and its engine answers
  uint32_t blocks;
  uint32_t gpu;
  int64_t age_ms;  // since its last event (-1: none yet)
};

Rank RankOf(const index::PublisherSlot& s, const index::PublisherMatch& m, int64_t now_ns) {
  const int64_t last = index::Ld(s.ingest.last_event_wall_ns);
  const auto stream = static_cast<wire::StreamState>(index::Ld(s.ingest.stream_state) & 3);
  return {index::Ld(s.ingest.reachable) != 0 && stream == wire::StreamState::kStreaming, m.blocks,
          m.tier_blocks[index::kGpu], last == 0 ? -1 : (now_ns - last) / 1'000'000};
}

// A pod kvidx can vouch for right now is preferred to a longer match it cannot; then more
// blocks, more of them on GPU, the freshest.
bool Better(const Rank& a, const Rank& b) {
  if (a.trusted != b.trusted) return a.trusted;
  if (a.blocks != b.blocks) return a.blocks > b.blocks;
  if (a.gpu != b.gpu) return a.gpu > b.gpu;
  return a.age_ms >= 0 && (b.age_ms < 0 || a.age_ms < b.age_ms);
}

}  // namespace

uint32_t KvIndexService::PodEntry(CallPods& pods, index::PublisherId id,
                                  const index::PublisherSlot& s, int64_t now_ns) const {
  if (id >= pods.entry_of.size()) pods.entry_of.resize(id + 1, -1);
  if (pods.entry_of[id] >= 0) return static_cast<uint32_t>(pods.entry_of[id]);
  v1::MatchedPod* mp = pods.resp->add_pods();
  mp->set_pod(std::string(control::FieldView(s.id.pod)));
  mp->set_dp_rank(s.id.dp_rank);
  FillFreshness(s, mp->mutable_freshness(), now_ns);
  if (index::Ld(s.ingest.has_instance) != 0) {
    mp->set_kvbm_instance(
        wire::U128Decimal(index::Ld(s.ingest.instance_hi), index::Ld(s.ingest.instance_lo)));
  }
  pods.entry_of[id] = pods.resp->pods_size() - 1;
  return static_cast<uint32_t>(pods.entry_of[id]);
}

void KvIndexService::WriteMatches(const index::LookupResult& r, v1::LookupResult* out,
                                  CallPods* pods) const {
  const int64_t now = WallNanos();
  int best = -1;
  Rank best_rank{};
  v1::MatchColumns* cols = pods != nullptr ? out->mutable_columns() : nullptr;
  for (const auto& m : r.matches) {
    const index::PublisherSlot* s = index_->publisher_slot(m.publisher);
    if (s == nullptr) continue;
    int at = 0;
    if (cols != nullptr) {
      cols->add_pod(PodEntry(*pods, m.publisher, *s, now));
      cols->add_matched_blocks(m.blocks);
      cols->add_gpu_blocks(m.tier_blocks[index::kGpu]);
      cols->add_cpu_blocks(m.tier_blocks[index::kCpu]);
      cols->add_disk_blocks(m.tier_blocks[index::kDisk]);
      at = cols->pod_size() - 1;
    } else {
      v1::PodMatch* pm = out->add_matches();
      pm->set_pod(std::string(control::FieldView(s->id.pod)));
      pm->set_dp_rank(s->id.dp_rank);
      pm->set_matched_blocks(m.blocks);
      pm->set_matched_tokens(uint64_t{m.blocks} * out->block_size());
      pm->set_gpu_blocks(m.tier_blocks[index::kGpu]);
      pm->set_cpu_blocks(m.tier_blocks[index::kCpu]);
      pm->set_disk_blocks(m.tier_blocks[index::kDisk]);
      FillFreshness(*s, pm->mutable_freshness(), now);
      if (index::Ld(s->ingest.has_instance) != 0) {
        pm->set_kvbm_instance(
            wire::U128Decimal(index::Ld(s->ingest.instance_hi), index::Ld(s->ingest.instance_lo)));
      }
      at = out->matches_size() - 1;
    }
    const Rank rank = RankOf(*s, m, now);
    if (best < 0 || Better(rank, best_rank)) {
      best = at;
      best_rank = rank;
    }
  }
  if (cols != nullptr) {
    out->set_best_column(best);
  } else if (best >= 0) {
    *out->mutable_best() = out->matches(best);
  }
}

}  // namespace kvidx::query
