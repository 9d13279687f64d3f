"""Hub names -> (provider, repo, tag, revision), and which of a repository's files each one selects."""

import pytest

from zenlm.weights.hub_names import HubName, parse, select, tag_of

QWEN_GGUF = ["README.md", ".gitattributes", "qwen2.5-7b-instruct-fp16-00001-of-00004.gguf",
             "qwen2.5-7b-instruct-fp16-00002-of-00004.gguf", "qwen2.5-7b-instruct-fp16-00003-of-00004.gguf",
             "qwen2.5-7b-instruct-fp16-00004-of-00004.gguf", "qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf",
             "qwen2.5-7b-instruct-q4_k_m-00002-of-00002.gguf", "qwen2.5-7b-instruct-q4_k_s.gguf",
             "qwen2.5-7b-instruct-q8_0.gguf", "qwen2.5-7b-instruct-q2_k.gguf"]
QWEN_HF = [".gitattributes", "LICENSE", "README.md", "config.json", "generation_config.json", "merges.txt",
           "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors", "model-00003-of-00004.safetensors",
           "model-00004-of-00004.safetensors", "model.safetensors.index.json", "tokenizer.json",
           "tokenizer_config.json", "vocab.json", "onnx/model.onnx", "pytorch_model.bin"]


@pytest.mark.parametrize("text, want", [
    ("Qwen/Qwen2.5-7B-Instruct", HubName("hf", "Qwen/Qwen2.5-7B-Instruct")),
    ("Qwen/Qwen2.5-Coder-7B-Instruct-GGUF:Q4_K_M", HubName("hf", "Qwen/Qwen2.5-Coder-7B-Instruct-GGUF", "q4_k_m")),
    ("Qwen/Qwen2.5-7B-Instruct@v1.0", HubName("hf", "Qwen/Qwen2.5-7B-Instruct", None, "v1.0")),
    ("Org/M-GGUF:q8_0@0123456789abcdef0123456789abcdef01234567",
     HubName("hf", "Org/M-GGUF", "q8_0", "0123456789abcdef0123456789abcdef01234567")),
    ("Org/M-GGUF@refs/pr/1:q8_0", HubName("hf", "Org/M-GGUF", "q8_0", "refs/pr/1")),
    ("hf.co/Org/M-GGUF:q4_0", HubName("hf", "Org/M-GGUF", "q4_0")),
    ("hf:Org/M", HubName("hf", "Org/M")),
    ("modelscope:Qwen/Qwen2.5-7B-Instruct", HubName("modelscope", "Qwen/Qwen2.5-7B-Instruct")),
    ("modelscope:Qwen/Qwen2.5-7B-Instruct-GGUF:q4_k_m@master",
     HubName("modelscope", "Qwen/Qwen2.5-7B-Instruct-GGUF", "q4_k_m", "master")),
])
def test_names_parse(text, want):
    assert parse(text) == want


@pytest.mark.parametrize("text", ["default", "qwen2.5-0.5b", "models/a/b", "./Org/M", "/abs/Org", "~/Org/M",
                                  "dir/model.gguf", "dir/model.safetensors", "Org/M:", "Org/M:a b", ""])
def test_paths_and_presets_are_not_hub_names(text):
    assert parse(text) is None


@pytest.mark.parametrize("text", ["hf.co/not-a-repo", "modelscope:Org/M:q8_0:q4_0", "Org/M@a@b"])
def test_malformed_hub_names_are_one_line_errors(text):
    with pytest.raises(ValueError, match="hub name") as e:
        parse(text)
    assert "\n" not in str(e.value)


def test_canonical_name_round_trips():
    for text in ["Org/M", "Org/M:q8_0", "Org/M@v1", "Org/M:q8_0@v1", "modelscope:Org/M:q4_0@master"]:
        assert str(parse(text)) == text
        assert parse(str(parse(text))) == parse(text)


def test_hf_repo_selects_config_tokenizer_and_safetensors_only():
    s = select(parse("Qwen/Qwen2.5-7B-Instruct"), QWEN_HF)
    assert s.kind == "hf" and s.main == ""
    assert set(s.files) == {"config.json", "generation_config.json", "model.safetensors.index.json",
                            "tokenizer.json", "tokenizer_config.json",
                            *(f"model-0000{i}-of-00004.safetensors" for i in range(1, 5))}


def test_tag_selects_one_file_or_every_shard_of_a_split_one():
    repo = "Qwen/Qwen2.5-7B-Instruct-GGUF"
    assert select(parse(f"{repo}:q8_0"), QWEN_GGUF).files == ("qwen2.5-7b-instruct-q8_0.gguf",)
    s = select(parse(f"{repo}:Q4_K_M"), QWEN_GGUF)
    assert s.kind == "gguf" and s.main == "qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf"
    assert s.files == ("qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf",
                       "qwen2.5-7b-instruct-q4_k_m-00002-of-00002.gguf")
    assert len(select(parse(f"{repo}:fp16"), QWEN_GGUF).files) == 4
    # q4_k_s is not q4_k_m, q2_k is not q2_k_s: a tag matches whole
    assert select(parse(f"{repo}:q4_k_s"), QWEN_GGUF).files == ("qwen2.5-7b-instruct-q4_k_s.gguf",)


def test_no_tag_takes_q4_k_m_as_llama_cpp_does_or_the_only_file():
    s = select(parse("Qwen/Qwen2.5-7B-Instruct-GGUF"), QWEN_GGUF)
    assert s.main == "qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf"
    assert select(parse("Org/One-GGUF"), ["README.md", "one-q8_0.gguf"]).main == "one-q8_0.gguf"
    with pytest.raises(ValueError, match=r"no GGUF file matches the tag 'q4_k_m' \(the default.*has q2_k, q8_0"):
        select(parse("Org/Two-GGUF"), ["two-q8_0.gguf", "two-q2_k.gguf"])


def test_a_tag_on_an_hf_repo_chooses_its_gguf_files():
    files = QWEN_HF + ["gguf/model-q8_0.gguf"]
    assert select(parse("Org/Both"), files).kind == "hf"
    assert select(parse("Org/Both:q8_0"), files).files == ("gguf/model-q8_0.gguf",)
    with pytest.raises(ValueError, match="no GGUF file for the tag 'q8_0'"):
        select(parse("Org/M:q8_0"), QWEN_HF)


@pytest.mark.parametrize("files, tag, message", [
    (QWEN_GGUF, "q5_k_m", "no GGUF file matches the tag 'q5_k_m'; the repository has fp16, q2_k, q4_k_m, q4_k_s, "
                          "q8_0"),
    (["a-q8_0.gguf", "sub/b-q8_0.gguf"], "q8_0", r"2 GGUF files match the tag 'q8_0' \(a-q8_0.gguf, sub/b-q8_0.gguf\)"),
    (["m-q8_0-00001-of-00003.gguf", "m-q8_0-00003-of-00003.gguf"], "q8_0", r"lacks shard\(s\) 2 of 3"),
    (["README.md", "config.json"], None, "neither safetensors weights with a config.json nor GGUF files"),
    (["config.json", "model.safetensors"], None, "no tokenizer.json"),
])
def test_selection_errors_are_one_line(files, tag, message):
    with pytest.raises(ValueError, match=message) as e:
        select(HubName("hf", "Org/M", tag), files)
    assert "\n" not in str(e.value)


def test_tag_of_names_the_quantization_in_a_file_name():
    assert tag_of("Qwen2.5-7B-Instruct.Q4_K_M.gguf") == "q4_k_m"
    assert tag_of("model-bf16.gguf") == "bf16"
    assert tag_of("model.gguf") == "model.gguf"
