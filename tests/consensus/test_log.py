from consensus import ctrl, log
from consensus.log import LogLayout, encode_entry, read_entry


def test_slot_size_is_a_power_of_two_that_fits():
    for payload in (1, 64, 80, 512, 4000):
        size = log.slot_bytes_for(payload)
        assert size & (size - 1) == 0
        assert size >= payload + log.ENTRY_OVERHEAD_BYTES


def test_encode_then_read_round_trip():
    layout = LogLayout.create(8, 64)
    buf = bytearray(layout.region_bytes)
    slot = bytearray(layout.slot_bytes)
    length = encode_entry(slot, 9, 257, 8, b"hello")
    offset = layout.offset(9)
    buf[offset : offset + length] = slot[:length]
    entry = read_entry(buf, offset, 9, 64)
    assert entry is not None and (entry.index, entry.proposal, entry.commit) == (9, 257, 8)
    assert entry.payload == b"hello"
    assert layout.offset(9) == layout.offset(1)  # slot 9 % 8 == 1
    assert read_entry(buf, offset, 1, 64) is None  # an earlier wrap's index is not accepted


def test_torn_entry_is_rejected():
    layout = LogLayout.create(8, 64)
    buf = bytearray(layout.region_bytes)
    slot = bytearray(layout.slot_bytes)
    length = encode_entry(slot, 3, 257, 2, b"abcdef")
    offset = layout.offset(3)
    buf[offset : offset + length - 16] = slot[: length - 16]  # trailer not written yet
    assert read_entry(buf, offset, 3, 64) is None
    # A new leader's entry half written over a complete one: header changed, trailer old.
    buf[offset : offset + length] = slot[:length]
    newer = bytearray(layout.slot_bytes)
    encode_entry(newer, 3, 514, 0, b"zzzzzz")
    buf[offset : offset + 32] = newer[:32]
    assert read_entry(buf, offset, 3, 64) is None


def test_commit_word_trusted_only_when_proposals_agree():
    buf = bytearray(64)
    log.COMMIT_WORD.pack_into(buf, log.COMMIT_WORD_OFFSET, 514, 40, 514)
    assert log.read_commit_word(memoryview(buf)) == (514, 40)
    log.U64.pack_into(buf, log.COMMIT_WORD_OFFSET, 771)  # leading half of a newer write
    assert log.read_commit_word(memoryview(buf)) == (0, 0)


def test_request_numbers_never_collide():
    seen = set()
    for rid in (1, 2, 3, 255):
        previous = 0
        for _ in range(50):
            previous = ctrl.next_request(rid, previous)
            assert previous not in seen
            seen.add(previous)
