"""The data pipeline: exact prompt/response boundary, bad rows, packing, the schedule."""

import json

import pytest
import torch

from trainers.data import BatchSchedule, DataError, load_examples, pack_rows, packed_batch, pad_batch
from trainers.tokenizer import build_char_tokenizer

TOK = build_char_tokenizer(pad_to=8)
EOS = TOK.eos_token_id


def write(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


def test_boundary_is_exact_with_the_chat_template(tmp_path):
    p = write(tmp_path, [{"prompt": "2+2?", "response": "4"},
                         {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                                       {"role": "assistant", "content": "yo"}]}])
    ex, rep = load_examples(p, TOK, 64, eos_id=EOS)
    assert rep.kept == 2
    prompt_text = TOK.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True, tokenize=False)
    want_prompt = TOK(prompt_text, add_special_tokens=False).input_ids
    assert ex[0].ids[:ex[0].prompt_len] == want_prompt
    assert TOK.decode(ex[0].ids[ex[0].prompt_len:]) == "4<|eos|>"  # the answer + EOS (LLaDA's guideline)
    assert TOK.decode(ex[1].ids[ex[1].prompt_len:]) == "yo<|eos|>"
    assert TOK.decode(ex[1].ids[:ex[1].prompt_len]) == "<|system|>be brief<|eot|><|user|>hi<|eot|><|assistant|>"


def test_plain_rows_without_template(tmp_path):
    p = write(tmp_path, [{"prompt": "ab", "response": "cd"}])
    ex, _ = load_examples(p, TOK, 64, eos_id=EOS, use_template=False)
    assert TOK.decode(ex[0].ids) == "abcd<|eos|>" and ex[0].prompt_len == 2


@pytest.mark.parametrize(
    "row,match",
    [
        ('{"prompt": "a", "response": ', "line 2: invalid JSON"),
        ({"prompt": "a", "response": ""}, "line 2: empty response"),
        ({"prompt": "a" * 80, "response": "b"}, "line 2: prompt of 83 tokens leaves no room"),
        ({"question": "a"}, "line 2: expected"),
        ({"messages": [{"role": "user", "content": "x"}]}, "line 2: no assistant message"),
    ],
)
def test_bad_rows_name_their_line_or_are_skipped(tmp_path, row, match):
    p = write(tmp_path, [{"prompt": "a", "response": "b"}, row, {"prompt": "c", "response": "d"}])
    with pytest.raises(DataError, match=match):
        load_examples(p, TOK, 64, eos_id=EOS)
    ex, rep = load_examples(p, TOK, 64, eos_id=EOS, skip_bad_rows=True)
    assert rep.skipped_bad == 1 and rep.kept == 2 and len(ex) == 2


def test_over_long_rows_dropped_or_truncated_and_counted(tmp_path):
    p = write(tmp_path, [{"prompt": "a", "response": "b" * 50}, {"prompt": "a", "response": "b"}])
    ex, rep = load_examples(p, TOK, 20, eos_id=EOS)
    assert rep.dropped_long == 1 and len(ex) == 1
    ex, rep = load_examples(p, TOK, 20, eos_id=EOS, over_long="truncate")
    assert rep.truncated == 1 and len(ex) == 2 and len(ex[0].ids) == 20


def test_padded_batch_eos_switch(tmp_path):
    p = write(tmp_path, [{"prompt": "ab", "response": "c"}, {"prompt": "a", "response": "bcdef"}])
    ex, _ = load_examples(p, TOK, 64, eos_id=EOS, use_template=False)
    train = pad_batch(ex, EOS, "train")
    assert train.attention_mask is None
    assert train.loss_mask[0].tolist() == [False, False, True, True, True, True, True]  # c, EOS, + 3 EOS pads
    assert (train.input_ids[0, 3:] == EOS).all()
    excl = pad_batch(ex, EOS, "exclude")
    assert excl.loss_mask[0].tolist() == [False, False, True, True, False, False, False]
    assert excl.attention_mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0]


def test_packing_keeps_documents_apart(tmp_path):
    p = write(tmp_path, [{"prompt": "ab", "response": "cd"}] * 5)
    ex, _ = load_examples(p, TOK, 64, eos_id=EOS, use_template=False)  # 5 tokens each
    rows = pack_rows(ex, 12)
    assert [len(r) for r in rows] == [2, 2, 1]
    b = packed_batch(rows, 12, EOS)
    assert b.doc_ids[0].tolist() == [0] * 5 + [1] * 5 + [-1] * 2
    assert b.positions[0, :10].tolist() == list(range(5)) * 2
    assert b.loss_mask[0].tolist() == ([False] * 2 + [True] * 3) * 2 + [False] * 2
    assert b.seg[1].tolist()[:10] == [2] * 5 + [3] * 5 and b.num_docs == 5


def test_schedule_is_a_pure_function_of_seed_and_step(tmp_path):
    p = write(tmp_path, [{"prompt": "a" * (i % 5 + 1), "response": "b"} for i in range(40)])
    ex, _ = load_examples(p, TOK, 64, eos_id=EOS, use_template=False)
    kw = dict(micro_batch_size=4, micro_batches_per_step=2, max_length=64, pad_id=EOS, seed=1)
    a, b = BatchSchedule(ex, **kw), BatchSchedule(ex, **kw)
    assert a.steps_per_epoch == 5
    for step in (0, 3, 7, 12):
        for i in range(2):
            assert torch.equal(a.micro_batch(step, i).input_ids, b.micro_batch(step, i).input_ids)
    first = [tuple(a.micro_batch(0, i).prompt_len.tolist()) for i in range(2)]
    other_epoch = [tuple(a.micro_batch(5, i).prompt_len.tolist()) for i in range(2)]
    assert first != other_epoch
    c = BatchSchedule(ex, **{**kw, "seed": 2})
    assert not torch.equal(c.micro_batch(0, 0).input_ids, a.micro_batch(0, 0).input_ids)
