"""service/patches_at_work.py: which PATCH of an upload is stopped when another claims it."""

from __future__ import annotations

import uuid

from service.patches_at_work import PatchesAtWork


def test_a_newer_claim_stops_the_patch_at_work_and_an_overtaken_one_stops_itself() -> None:
    patches, stopped = PatchesAtWork(), []
    upload, other = uuid.uuid4(), uuid.uuid4()
    with patches.at_work(upload, 1, lambda: stopped.append(1)), patches.at_work(other, 7, lambda: stopped.append(7)):
        with patches.at_work(upload, 3, lambda: stopped.append(3)):
            assert stopped == [1]  # the newer claim, on that upload only
            with patches.at_work(upload, 2, lambda: stopped.append(2)):  # its claim answered last
                assert stopped == [1, 2]
        with patches.at_work(upload, 4, lambda: stopped.append(4)):  # 3 has ended: nothing to stop
            assert stopped == [1, 2]
    assert stopped == [1, 2]


def test_claims_of_a_finished_upload_share_its_generation_and_each_ends_only_its_own() -> None:
    patches, stopped = PatchesAtWork(), []
    upload = uuid.uuid4()
    first = patches.at_work(upload, 5, lambda: stopped.append("first"))
    first.__enter__()
    with patches.at_work(upload, 5, lambda: stopped.append("second")):
        first.__exit__(None, None, None)  # the first ends while the second is at work
        with patches.at_work(upload, 6, lambda: stopped.append("third")):
            assert stopped == ["first", "second"]  # the second was still known to be at work
