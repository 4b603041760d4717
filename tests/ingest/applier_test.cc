#include "ingest/applier.h"

#include <algorithm>
#include <numeric>

#include "gtest/gtest.h"

#include "index/block_key.h"
#include "tests/index/test_util.h"

namespace kvidx::ingest {
namespace {

using index::NamespaceId;
using index::PublisherId;

class ApplierTest : public ::testing::Test {
 protected:
  ApplierTest() : seg_("applier") {
    base_ = *idx().RegisterNamespace({.model = "m", .block_size = 2});
    pub_ = *idx().RegisterPublisher({.pod = "p", .ns = base_});
    ApplierConfig cfg;
    cfg.lora_names[7] = "sql";
    applier_ = std::make_unique<Applier>(&idx(), cfg);
  }
  index::PrefixIndex& idx() { return seg_.index(); }
  Event Stored(std::vector<uint64_t> hashes, std::vector<uint32_t> tokens,
               std::optional<uint64_t> parent = std::nullopt) {
    Event e;
    e.kind = EventKind::kStored;
    e.hashes = std::move(hashes);
    e.tokens = std::move(tokens);
    e.block_size = 2;
    e.parent = parent;
    return e;
  }
  uint32_t Matched(NamespaceId ns, std::vector<uint32_t> tokens) {
    auto r = idx().Lookup(*idx().KeysForTokens(ns, tokens));
    return r.matches.empty() ? 0 : r.matches[0].blocks;
  }

  kvidx::testing::ScopedSegment seg_;
  NamespaceId base_;
  PublisherId pub_;
  std::unique_ptr<Applier> applier_;
};

TEST_F(ApplierTest, LoraEventsGoToTheirOwnNamespaceAndRemovalsFindThem) {
  EventBatch b;
  Event e = Stored({1, 2}, {1, 2, 3, 4});
  e.lora_name = "chat";
  b.events.push_back(e);
  Event by_id = Stored({3}, {9, 9});
  by_id.lora_id = 7;  // mapped to "sql" by configuration
  b.events.push_back(by_id);
  ASSERT_TRUE(applier_->Apply(pub_, b).ok());
  auto chat = idx().FindNamespace("m", "chat");
  auto sql = idx().FindNamespace("m", "sql");
  ASSERT_TRUE(chat && sql);
  EXPECT_EQ(Matched(*chat, {1, 2, 3, 4}), 2u);
  EXPECT_EQ(Matched(base_, {1, 2, 3, 4}), 0u);
  EXPECT_EQ(Matched(*sql, {9, 9}), 1u);
  EventBatch rm;
  Event r;
  r.kind = EventKind::kRemoved;
  r.hashes = {2};
  rm.events.push_back(r);
  ASSERT_TRUE(applier_->Apply(pub_, rm).ok());
  EXPECT_EQ(Matched(*chat, {1, 2, 3, 4}), 1u);
  EXPECT_EQ(idx().publisher_slot(pub_)->index.unknown_removes, 0u);
}

TEST_F(ApplierTest, ExtraKeysAndCacheSaltsAreKeyedAndMatchOnlyThemselves) {
  const PublisherId other = *idx().RegisterPublisher({.pod = "q", .ns = base_});
  const index::BlockKey root = idx().namespace_slot(base_)->root;
  auto holders = [&](const std::vector<index::BlockKey>& keys) {
    std::vector<std::pair<PublisherId, uint32_t>> out;
    for (const auto& m : idx().Lookup(keys).matches) out.emplace_back(m.publisher, m.blocks);
    std::sort(out.begin(), out.end());
    return out;
  };
  using Holders = std::vector<std::pair<PublisherId, uint32_t>>;
  // Multimodal-like: pub_ stores {1,2,3,4} with an image hash on block 0; `other` stores the
  // same tokens bare.
  const std::string image("\x91\x92\xa3img\x00", 7);
  EventBatch b;
  Event mm = Stored({1, 2}, {1, 2, 3, 4});
  mm.extra_keys = {image, ""};
  b.events.push_back(mm);
  ASSERT_TRUE(applier_->Apply(pub_, b).ok());
  EventBatch bare;
  bare.events.push_back(Stored({1, 2}, {1, 2, 3, 4}));
  ASSERT_TRUE(applier_->Apply(other, bare).ok());
  const std::vector<uint32_t> t = {1, 2, 3, 4};
  const std::span<const uint8_t> image_bytes(reinterpret_cast<const uint8_t*>(image.data()),
                                             image.size());
  const std::vector<std::span<const uint8_t>> with_image = {image_bytes};
  EXPECT_EQ(holders(index::ChainBlockKeys(root, t, 2, with_image)), (Holders{{pub_, 2}}));
  EXPECT_EQ(holders(index::ChainBlockKeys(root, t, 2)), (Holders{{other, 2}}));
  // A salt alone (SGLang's metadata) keys block 0 as msgpack([salt]); the event continuing the
  // prompt (with a parent) chains from it.
  EventBatch salted;
  Event s0 = Stored({11, 12}, {5, 6, 7, 8});
  s0.cache_salt = "tenant-a";
  Event s1 = Stored({13}, {9, 10}, 12);
  s1.cache_salt = "tenant-a";
  salted.events = {s0, s1};
  ASSERT_TRUE(applier_->Apply(pub_, salted).ok());
  const std::vector<uint32_t> u = {5, 6, 7, 8, 9, 10};
  auto salt_keys = [&](std::string_view salt) {
    const std::vector<uint8_t> extra = index::CacheSaltExtra(salt);
    const std::vector<std::span<const uint8_t>> e = {extra};
    return index::ChainBlockKeys(root, u, 2, e);
  };
  EXPECT_EQ(holders(salt_keys("tenant-a")), (Holders{{pub_, 3}}));
  EXPECT_TRUE(holders(salt_keys("tenant-b")).empty());
  EXPECT_TRUE(holders(index::ChainBlockKeys(root, u, 2)).empty());
}

TEST_F(ApplierTest, SkipOpsResumesInsideABatch) {
  EventBatch b;
  b.events.push_back(Stored({1, 2, 3}, {1, 2, 3, 4, 5, 6}));
  Event r;
  r.kind = EventKind::kRemoved;
  r.hashes = {1};
  b.events.push_back(r);
  // A predecessor applied the first two stores before dying.
  EventBatch first;
  first.events.push_back(Stored({1, 2}, {1, 2, 3, 4}));
  ASSERT_TRUE(applier_->Apply(pub_, first).ok());
  uint64_t before = idx().publisher_slot(pub_)->index.applied_ops;
  ASSERT_EQ(before, 2u);
  ASSERT_TRUE(applier_->Apply(pub_, b, /*skip_ops=*/2).ok());
  EXPECT_EQ(idx().publisher_slot(pub_)->index.applied_ops, 4u);  // 1 store + 1 remove applied
  EXPECT_EQ(idx().publisher_slot(pub_)->index.duplicate_stores, 0u);
  auto keys = *idx().KeysForTokens(base_, std::vector<uint32_t>{1, 2, 3, 4, 5, 6});
  EXPECT_TRUE(idx().Holders(keys[0]).empty());   // removed
  EXPECT_EQ(idx().Holders(keys[2]).size(), 1u);  // the third block, keyed from its parent
}

TEST_F(ApplierTest, SequenceIdFormStoresRemovesAndCountsOrphans) {
  EventBatch b;
  Event s;
  s.kind = EventKind::kSeqStored;
  s.sequence_id = 5;
  s.block_numbers = {0, 1, 2};
  s.tokens = {1, 2, 3, 4, 5, 6};
  s.block_size = 2;
  b.events.push_back(s);
  Event orphan = s;
  orphan.sequence_id = 6;
  orphan.block_numbers = {3};
  orphan.tokens = {7, 8};
  b.events.push_back(orphan);
  Event other = s;  // a second sequence with the same first block: the same content key
  other.sequence_id = 9;
  other.block_numbers = {0};
  other.tokens = {1, 2};
  b.events.push_back(other);
  ASSERT_TRUE(applier_->Apply(pub_, b).ok());
  EXPECT_EQ(Matched(base_, {1, 2, 3, 4, 5, 6}), 3u);
  EXPECT_EQ(idx().publisher_slot(pub_)->index.orphan_blocks, 1u);
  EventBatch rm;
  Event r;
  r.kind = EventKind::kSeqRemoved;
  r.sequence_id = 5;
  r.block_numbers = {0, 1};
  rm.events.push_back(r);
  Event fin;
  fin.kind = EventKind::kRequestFinished;
  fin.sequence_id = 5;
  fin.request_id = "req-1";
  fin.finished = true;
  rm.events.push_back(fin);
  ASSERT_TRUE(applier_->Apply(pub_, rm).ok());
  // Block 0 is still referenced by sequence 9; block 1 is gone, so the run stops at 1.
  EXPECT_EQ(Matched(base_, {1, 2, 3, 4, 5, 6}), 1u);
  const auto* seqs = applier_->sequences(pub_);
  ASSERT_NE(seqs, nullptr);
  EXPECT_TRUE(seqs->at(5).finished);
  EXPECT_EQ(seqs->at(5).request_id, "req-1");
}

Event SeqStored(int64_t seq, std::vector<uint32_t> numbers) {
  Event s;
  s.kind = EventKind::kSeqStored;
  s.sequence_id = seq;
  s.block_size = 2;
  for (uint32_t n : numbers) {
    s.block_numbers.push_back(n);
    s.tokens.push_back(1000 + n);
    s.tokens.push_back(static_cast<uint32_t>(seq));
  }
  return s;
}
Event SeqRemoved(int64_t seq, std::vector<uint32_t> numbers) {
  Event r;
  r.kind = EventKind::kSeqRemoved;
  r.sequence_id = seq;
  r.block_numbers = std::move(numbers);
  return r;
}
Event Finished(int64_t seq, std::string request_id) {
  Event f;
  f.kind = EventKind::kRequestFinished;
  f.sequence_id = seq;
  f.request_id = std::move(request_id);
  f.finished = true;
  return f;
}

// Issue 11: the sequence table holds only sequences with stored blocks, so a long run of
// requests (store, finish, remove) leaves it empty, and its byte figure returns to 0.
TEST_F(ApplierTest, TheSequenceTableForgetsSequencesThatHoldNothing) {
  for (int64_t seq = 1; seq <= 20000; ++seq) {
    EventBatch b;
    b.events = {SeqStored(seq, {0, 1, 2}), Finished(seq, std::string(1000, 'r')),
                SeqRemoved(seq, {2, 1, 0})};
    ASSERT_TRUE(applier_->Apply(pub_, b).ok());
  }
  EXPECT_TRUE(applier_->sequences(pub_)->empty());
  EXPECT_EQ(applier_->sequence_bytes(pub_), 0u);
  EXPECT_EQ(idx().ingest_state(pub_)->sequence_bytes, 0u);
  EXPECT_EQ(idx().publisher_slot(pub_)->index.pairs, 0u);
  // A RequestFinished of a sequence that holds nothing keeps nothing.
  EventBatch b;
  b.events = {Finished(777, "never stored")};
  ASSERT_TRUE(applier_->Apply(pub_, b).ok());
  EXPECT_TRUE(applier_->sequences(pub_)->empty());
  // A finished sequence that still holds blocks is kept with its (capped) request id, and
  // trailing removals shrink it.
  b.events = {SeqStored(8, {0, 1, 2, 3}), Finished(8, std::string(1000, 'x')),
              SeqRemoved(8, {3, 2})};
  ASSERT_TRUE(applier_->Apply(pub_, b).ok());
  const SequenceState& s = applier_->sequences(pub_)->at(8);
  EXPECT_TRUE(s.finished);
  EXPECT_EQ(s.request_id.size(), kMaxRequestIdBytes);
  EXPECT_EQ(s.blocks.size(), 2u);
  EXPECT_EQ(s.stored, 2u);
  EXPECT_EQ(applier_->sequence_bytes(pub_), SequenceBytes(s) + 2 * kKeyRefBytes);
  EXPECT_EQ(idx().ingest_state(pub_)->sequence_bytes, SequenceBytes(s) + 2 * kKeyRefBytes);
  // Removing a block of an unknown sequence is an unknown removal, not a new entry.
  uint64_t unknown = idx().publisher_slot(pub_)->index.unknown_removes;
  b.events = {SeqRemoved(999, {0, 1})};
  ASSERT_TRUE(applier_->Apply(pub_, b).ok());
  EXPECT_EQ(idx().publisher_slot(pub_)->index.unknown_removes, unknown + 2);
  EXPECT_EQ(applier_->sequences(pub_)->size(), 1u);
}

// Issue 11: a publisher that never removes cannot grow its table past sequence_table_bytes;
// what does not fit is neither recorded nor stored, and is counted in budget_drops.
TEST_F(ApplierTest, TheSequenceTableStaysWithinItsByteBudget) {
  ApplierConfig cfg;
  cfg.max_sequence_bytes = 64 << 10;
  Applier small(&idx(), cfg);
  uint64_t sent = 0;
  for (int64_t seq = 1; seq <= 2000; ++seq) {
    EventBatch b;
    b.events = {SeqStored(seq, {0, 1, 2, 3, 4, 5, 6, 7}), Finished(seq, "r")};
    sent += 8;
    ASSERT_TRUE(small.Apply(pub_, b).ok());
    ASSERT_LE(small.sequence_bytes(pub_), cfg.max_sequence_bytes);
  }
  size_t recorded = 0;
  for (const auto& [id, s] : *small.sequences(pub_)) recorded += s.stored;
  const uint64_t dropped = idx().ingest_state(pub_)->budget_drops;
  EXPECT_GT(dropped, 0u);
  EXPECT_GT(recorded, 0u);
  // A refused block leaves its successors in the sequence without a parent: orphans.
  EXPECT_EQ(recorded + dropped + idx().publisher_slot(pub_)->index.orphan_blocks, sent);
  EXPECT_EQ(idx().publisher_slot(pub_)->index.pairs, recorded);
  // Once blocks are removed, room returns.
  EventBatch rm;
  for (const auto& [id, s] : *small.sequences(pub_)) {
    std::vector<uint32_t> all(s.blocks.size());
    std::iota(all.begin(), all.end(), 0u);
    rm.events.push_back(SeqRemoved(id, all));
  }
  ASSERT_TRUE(small.Apply(pub_, rm).ok());
  EXPECT_EQ(small.sequence_bytes(pub_), 0u);
  EventBatch again;
  again.events = {SeqStored(5000, {0, 1})};
  ASSERT_TRUE(small.Apply(pub_, again).ok());
  EXPECT_EQ(small.sequences(pub_)->at(5000).stored, 2u);
  EXPECT_EQ(idx().ingest_state(pub_)->budget_drops, dropped);
}

// A long sequence stored block by block in order (as the simulator's sequence-id engine and
// real ones do) costs its blocks, not 2^n: the table grows its vector by doubling only past
// the capacity. Before the fix a 23-block sequence reserved 2^23 entries and every later block
// of every sequence was refused by the byte budget and its successors counted as orphans.
TEST_F(ApplierTest, ALongSequenceCostsItsBlocksNotTwoToTheirNumber) {
  std::vector<uint32_t> numbers(300);
  std::iota(numbers.begin(), numbers.end(), 0u);
  EventBatch b;
  b.events = {SeqStored(1, numbers), SeqStored(2, numbers)};
  ASSERT_TRUE(applier_->Apply(pub_, b).ok());
  EXPECT_EQ(idx().publisher_slot(pub_)->index.orphan_blocks, 0u);
  EXPECT_EQ(idx().ingest_state(pub_)->budget_drops, 0u);
  EXPECT_EQ(applier_->sequences(pub_)->at(1).stored, 300u);
  EXPECT_EQ(applier_->sequences(pub_)->at(2).stored, 300u);
  EXPECT_LE(applier_->sequence_bytes(pub_),
            2 * (96 + 32 + 512 * sizeof(index::BlockKey)) + 600 * kKeyRefBytes);
  EXPECT_EQ(idx().publisher_slot(pub_)->index.pairs, 600u);
}

// A block held by more sequences than a holder slot can count (255) stays indexed until the
// last of them removes it.
TEST_F(ApplierTest, ABlockSharedByThousandsOfSequencesStaysUntilTheLastRemovesIt) {
  for (int64_t seq = 1; seq <= 1000; ++seq) {
    Event st = SeqStored(seq, {0});
    st.tokens = {7, 7};  // every sequence's block 0 has the same content
    EventBatch b;
    b.events = {st};
    ASSERT_TRUE(applier_->Apply(pub_, b).ok());
  }
  EXPECT_EQ(idx().publisher_slot(pub_)->index.pairs, 1u);
  for (int64_t seq = 1; seq <= 999; ++seq) {
    EventBatch b;
    b.events = {SeqRemoved(seq, {0})};
    ASSERT_TRUE(applier_->Apply(pub_, b).ok());
    ASSERT_EQ(idx().publisher_slot(pub_)->index.pairs, 1u) << "after " << seq << " removals";
  }
  EventBatch last;
  last.events = {SeqRemoved(1000, {0})};
  ASSERT_TRUE(applier_->Apply(pub_, last).ok());
  EXPECT_EQ(idx().publisher_slot(pub_)->index.pairs, 0u);
  EXPECT_EQ(applier_->sequence_bytes(pub_), 0u);
  EXPECT_EQ(idx().publisher_slot(pub_)->index.removed_blocks, 1000u);
}

TEST_F(ApplierTest, ClearedEventClearsThePublisher) {
  EventBatch b;
  b.events.push_back(Stored({1}, {1, 2}));
  Event c;
  c.kind = EventKind::kCleared;
  b.events.push_back(c);
  ASSERT_TRUE(applier_->Apply(pub_, b).ok());
  EXPECT_EQ(Matched(base_, {1, 2}), 0u);
  EXPECT_EQ(idx().publisher_slot(pub_)->index.clears, 1u);
}

TEST_F(ApplierTest, UnknownPublisherIsNotFound) {
  EventBatch b;
  b.events.push_back(Stored({1}, {1, 2}));
  EXPECT_TRUE(absl::IsNotFound(applier_->Apply(40, b)));
}

// Issue 9, defect 2: a worker killed after the first block of [BlockStored([]), BlockStored(
// [h1, h2])] resumes with skip 1. The empty event must neither crash nor eat the skip.
TEST_F(ApplierTest, EmptyEventsBeforeAPartlyAppliedOneKeepTheResumeSkip) {
  for (EventKind empty : {EventKind::kStored, EventKind::kRemoved}) {
    (void)idx().ClearPublisher(pub_);
    applier_->Forget(pub_);
    EventBatch predecessor;  // what the dead worker got to apply: h1 only
    predecessor.events.push_back(Stored({11}, {5, 6}));
    ASSERT_TRUE(applier_->Apply(pub_, predecessor).ok());
    uint64_t dups = idx().publisher_slot(pub_)->index.duplicate_stores;
    EventBatch b;
    Event e;
    e.kind = empty;
    e.block_size = 2;
    b.events.push_back(e);
    b.events.push_back(Stored({11, 12}, {5, 6, 7, 8}));
    ASSERT_TRUE(applier_->Apply(pub_, b, /*skip_ops=*/1).ok());
    EXPECT_EQ(idx().publisher_slot(pub_)->index.duplicate_stores, dups) << "h1 applied twice";
    EXPECT_EQ(Matched(base_, {5, 6, 7, 8}), 2u);
    auto keys = *idx().KeysForTokens(base_, std::vector<uint32_t>{5, 6});
    auto holders = idx().Holders(keys[0]);
    ASSERT_EQ(holders.size(), 1u);
    EXPECT_EQ(holders[0].refs, 1u) << "h1's reference count inflated";
  }
}

// Issue 9, defect 8: blocks of another size than the namespace's can never match; they are
// refused and counted, not stored under keys no lookup computes.
TEST_F(ApplierTest, BlocksOfAnotherSizeAreRefusedAndCounted) {
  EventBatch b;
  Event e = Stored({41, 42}, {1, 2, 3, 4, 5, 6, 7, 8});
  e.block_size = 4;  // the namespace has 2-token blocks
  b.events.push_back(e);
  b.events.push_back(Stored({43}, {9, 9}));  // a fitting one in the same batch still applies
  uint64_t ops = idx().publisher_slot(pub_)->index.applied_ops;
  ASSERT_TRUE(applier_->Apply(pub_, b).ok());
  const index::PublisherSlot* s = idx().publisher_slot(pub_);
  EXPECT_EQ(s->ingest.block_size_mismatches, 2u);
  EXPECT_EQ(s->ingest.mismatched_block_size, 4u);
  EXPECT_EQ(s->index.applied_ops, ops + 3) << "refused blocks still consume their operations";
  EXPECT_EQ(s->index.pairs, 1u);
  EXPECT_EQ(Matched(base_, {9, 9}), 1u);
  // The same for the sequence-id form.
  Event seq;
  seq.kind = EventKind::kSeqStored;
  seq.sequence_id = 1;
  seq.block_numbers = {0};
  seq.tokens = {1, 2, 3, 4};
  seq.block_size = 4;
  EventBatch sb;
  sb.events.push_back(seq);
  ASSERT_TRUE(applier_->Apply(pub_, sb).ok());
  EXPECT_EQ(idx().publisher_slot(pub_)->ingest.block_size_mismatches, 3u);
  EXPECT_EQ(idx().publisher_slot(pub_)->index.pairs, 1u);
}

// Issue 9, defect 4: a worker restart loses the applier's memory of which adapter namespaces
// a publisher stored into; removals right after it must still find their blocks.
TEST_F(ApplierTest, RemovalAfterARestartFindsTheAdapterNamespace) {
  EventBatch b;
  Event e = Stored({61, 62}, {1, 2, 3, 4});
  e.lora_name = "chat";
  b.events.push_back(e);
  ASSERT_TRUE(applier_->Apply(pub_, b).ok());
  auto chat = idx().FindNamespace("m", "chat");
  ASSERT_TRUE(chat);
  ASSERT_EQ(Matched(*chat, {1, 2, 3, 4}), 2u);
  Applier restarted(&idx(), ApplierConfig{});  // a new worker: no memory of "chat"
  EventBatch r;
  Event rm;
  rm.kind = EventKind::kRemoved;
  rm.hashes = {62};
  r.events.push_back(rm);
  ASSERT_TRUE(restarted.Apply(pub_, r).ok());
  EXPECT_EQ(Matched(*chat, {1, 2, 3, 4}), 1u);
  EXPECT_EQ(idx().publisher_slot(pub_)->index.unknown_removes, 0u);
}

// Issue 10: a publisher stays in its lane: its own model only, and a bounded number of adapter
// namespaces beyond the configured ones.
TEST_F(ApplierTest, APublisherStaysInItsModelAndCannotExhaustTheNamespaceTable) {
  EventBatch other;
  Event e = Stored({71}, {1, 2});
  e.model_name = "someone-elses-model";
  other.events.push_back(e);
  uint64_t ops = idx().publisher_slot(pub_)->index.applied_ops;
  (void)applier_->Apply(pub_, other);
  EXPECT_FALSE(idx().FindNamespace("someone-elses-model", "").has_value());
  EXPECT_EQ(idx().publisher_slot(pub_)->ingest.foreign_model_events, 1u);
  EXPECT_EQ(idx().publisher_slot(pub_)->index.applied_ops, ops + 1) << "refused ops still count";
  // Its own model by name is fine.
  EventBatch own;
  Event mine = Stored({72}, {3, 4});
  mine.model_name = "m";
  own.events.push_back(mine);
  ASSERT_TRUE(applier_->Apply(pub_, own).ok());
  EXPECT_EQ(Matched(base_, {3, 4}), 1u);
  // 10,000 made-up adapter names open at most max_adapters_per_model namespaces (the geometry
  // has 8 namespace slots: without the cap the table would be full and other models refused).
  ApplierConfig ac;
  ac.max_adapters_per_model = 3;
  ac.lora_names[7] = "sql";  // a configured adapter is always allowed
  Applier capped(&idx(), ac);
  for (int i = 0; i < 10000; ++i) {
    EventBatch b;
    Event l = Stored({uint64_t(100 + i)}, {5, 6});
    l.lora_name = "made-up-" + std::to_string(i);
    b.events.push_back(l);
    (void)capped.Apply(pub_, b);
  }
  EventBatch sql;
  Event s = Stored({99}, {8, 9});
  s.lora_id = 7;
  sql.events.push_back(s);
  (void)capped.Apply(pub_, sql);
  size_t adapters = 0;
  for (auto ns : idx().ActiveNamespaces())
    adapters += idx().namespace_slot(ns)->lora_name[0] != '\0';
  EXPECT_EQ(adapters, 4u);  // 3 made-up + the configured one
  EXPECT_EQ(idx().publisher_slot(pub_)->ingest.adapter_limit_events, 9997u);
  EXPECT_TRUE(idx().FindNamespace("m", "sql").has_value());
  EXPECT_TRUE(idx().RegisterNamespace({.model = "other", .block_size = 2}).ok())
      << "the namespace table must still have room for another model";
}

}  // namespace
}  // namespace kvidx::ingest
