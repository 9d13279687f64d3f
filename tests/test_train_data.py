"""Training data: SFT loss masks (golden, byte tokenizer and the real Qwen template), packing, DPO pairs, files.

Only assistant content and its end-of-turn token carry loss; packed rows restart positions per
document and never label across documents; DPO labels only the answer; the Loader resumes in place.
"""

import json

import pytest

from tests.tiny_train import CHATS, byte_tokenizer
from zenlm.train.data import (
    IGNORE,
    Loader,
    collate,
    collate_pairs,
    dpo_pair,
    pack_documents,
    pack_examples,
    pretrain_rows,
    read_documents,
    sft_example,
    sft_rows,
)


def labelled_text(tok, ids, labels) -> str:
    """The text of the tokens that carry loss (label i is token i + 1)."""
    return tok.decode([lab for lab in labels if lab != IGNORE])


def test_sft_mask_golden_byte_tokenizer():
    tok = byte_tokenizer()
    ids, labels = sft_example(tok, CHATS[0])
    assert tok.decode(ids) == ("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
                               "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nIn French?<|im_end|>\n"
                               "<|im_start|>assistant\nquatre<|im_end|>\n")
    assert labelled_text(tok, ids, labels) == "4<|im_end|>quatre<|im_end|>"
    # each label is the next token, and only where that token is assistant text or its end-of-turn
    end = tok.token_to_id("<|im_end|>")
    starts = [i for i, lab in enumerate(labels) if lab != IGNORE and (i == 0 or labels[i - 1] == IGNORE)]
    assert [tok.decode(ids[s - 2:s + 1]) for s in starts] == ["nt\n", "nt\n"]  # "assistant\n" precedes each
    assert all(labels[i] == ids[i + 1] for i in range(len(ids) - 1) if labels[i] != IGNORE)
    assert sum(lab == end for lab in labels) == 2


def test_sft_mask_golden_real_template(gguf_meta):
    from zenlm.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(gguf_meta)
    chat = {"messages": [{"role": "user", "content": "Reverse a list in Python."},
                         {"role": "assistant", "content": "Use `xs[::-1]`."}]}
    ids, labels = sft_example(tok, chat)
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are Qwen")  # the template's default system turn
    assert labelled_text(tok, ids, labels) == "Use `xs[::-1]`.<|im_end|>"


def test_sft_packing_keeps_examples_apart():
    tok = byte_tokenizer()
    examples = [sft_example(tok, c) for c in CHATS]
    rows = pack_examples(examples, 96, tok.pad_token_id)
    assert len(rows) < len(examples)  # some rows hold two chats
    total = sum(sum(lab != IGNORE for lab in ex[1]) for ex in examples)
    assert sum(sum(lab != IGNORE for lab in r.labels) for r in rows) == total
    for r in rows:
        for i, p in enumerate(r.positions):
            assert p == (0 if i == 0 or r.docs[i] != r.docs[i - 1] else r.positions[i - 1] + 1)
    b = collate(rows)
    assert b.tokens.shape == (len(rows), 96) and b.docs is not None


def test_pretrain_packing_labels_stay_inside_documents():
    rows = pack_documents([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4, 0)
    assert [r.tokens for r in rows] == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    assert [r.labels for r in rows] == [[2, 3, 0, IGNORE], [5, 0, IGNORE, 7], [8, 9, 0, IGNORE]]
    assert [r.positions for r in rows] == [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 2, 3]]  # a cut document restarts
    assert rows[1].docs == [1, 1, 1, 2]


def test_pretrain_files(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 20)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("def f():\n    return 1\n" * 10)
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "one doc"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    assert len(read_documents([tmp_path])) == 4
    rows = pretrain_rows([tmp_path], byte_tokenizer(), 64)
    assert rows and all(len(r.tokens) == 64 for r in rows)
    (tmp_path / "bad.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_documents([tmp_path / "bad.jsonl"])
    with pytest.raises(ValueError, match="does not exist"):
        read_documents([tmp_path / "missing.txt"])


def test_sft_file_errors_name_the_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(CHATS[1]) + "\n" + json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(ValueError, match="d.jsonl:2: .*no assistant tokens"):
        sft_rows([f], byte_tokenizer(), 64)


def test_dpo_pair_labels_only_the_answers():
    tok = byte_tokenizer()
    rec = {"prompt": [{"role": "user", "content": "Best language?"}], "chosen": "Python", "rejected": "COBOL!"}
    chosen, rejected = dpo_pair(tok, rec, 64)
    assert labelled_text(tok, chosen.tokens, chosen.labels) == "Python<|im_end|>"
    assert labelled_text(tok, rejected.tokens, rejected.labels) == "COBOL!<|im_end|>"
    b = collate_pairs([(chosen, rejected)] * 2)
    assert b.pairs == 2 and b.tokens.shape == (4, 64) and b.docs is None


def test_loader_order_and_resume():
    a = Loader(list(range(10)), 3, seed=1)
    first = [a.next_step() for _ in range(5)]  # crosses an epoch
    assert sorted(sum(first[:4], [])[:10]) == list(range(10))  # each item once per epoch
    b = Loader(list(range(10)), 3, seed=1)
    b.next_step()
    state = b.state_dict()
    c = Loader(list(range(10)), 3, seed=1)
    c.load_state_dict(state)
    assert [c.next_step() for _ in range(4)] == first[1:]
