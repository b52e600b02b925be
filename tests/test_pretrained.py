"""Loading and saving in the Hugging Face layout, and the errors on bad checkpoints."""
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from fastbert import BertConfig, BertForMaskedLM, BertModel
from fastbert.pretrained import default_path

transformers = pytest.importorskip("transformers")
IDS = torch.tensor([[101, 7592, 2088, 1010, 2129, 2024, 2017, 102], [101, 2748, 102, 0, 0, 0, 0, 0]])
MASK = (IDS != 0).long()


def _tiny(**kw):
    return BertConfig.minilm_l6(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                intermediate_size=96, **kw)


def test_save_loads_in_hf_unchanged(tmp_path):
    model = BertModel(_tiny()).eval()
    model.save_pretrained(tmp_path)
    hf = transformers.BertModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        ours, ref = model(IDS, MASK), hf(input_ids=IDS, attention_mask=MASK)
    torch.testing.assert_close(ours.pooler_output, ref.pooler_output)
    torch.testing.assert_close(ours.last_hidden_state[MASK.bool()], ref.last_hidden_state[MASK.bool()])
    assert set(load_file(tmp_path / "model.safetensors")) == set(hf.state_dict()) - {"embeddings.position_ids"}
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary files left


def test_loads_bin_with_bert_prefix_and_gamma_beta(tmp_path):
    hf = transformers.BertForMaskedLM(transformers.BertConfig(**_tiny().to_dict())).eval()
    sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
          for k, v in hf.state_dict().items()}
    sd["bert.embeddings.position_ids"] = torch.arange(512)[None]  # older checkpoints store the buffer
    torch.save(sd, tmp_path / "pytorch_model.bin")
    hf.config.save_pretrained(tmp_path)
    mlm = BertForMaskedLM.from_pretrained(tmp_path, backend="reference").eval()
    labels = torch.full_like(IDS, -100)
    labels[0, 2], labels[1, 1] = 2088, 2748
    with torch.no_grad():
        ref = hf(input_ids=IDS, attention_mask=MASK, labels=labels)
        loss, logits = mlm(IDS, attention_mask=MASK, labels=labels)
    torch.testing.assert_close(logits, ref.logits[labels != -100])
    torch.testing.assert_close(loss, ref.loss)
    with pytest.warns(UserWarning, match="pooler"):  # BertForMaskedLM checkpoints have no pooler
        BertModel.from_pretrained(tmp_path)


def test_mlm_roundtrip_through_hf(tmp_path):
    mlm = BertForMaskedLM(_tiny()).eval()
    torch.nn.init.normal_(mlm.cls.bias)
    mlm.save_pretrained(tmp_path)
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        _, ours = mlm(IDS, attention_mask=MASK)
        ref = hf(input_ids=IDS, attention_mask=MASK).logits
    torch.testing.assert_close(ours[MASK.bool()], ref[MASK.bool()], atol=1e-5, rtol=1e-5)
    back = BertForMaskedLM.from_pretrained(tmp_path)
    for (n, a), (_, b) in zip(mlm.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), n


def test_default_is_packaged_minilm():
    model = BertModel.from_pretrained()
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    ref = load_file(os.path.join(default_path(), "model.safetensors"))
    assert torch.equal(model.embeddings.word_embeddings.weight, ref["embeddings.word_embeddings.weight"])
    q, k = ref["encoder.layer.3.attention.self.query.weight"], ref["encoder.layer.3.attention.self.key.weight"]
    assert torch.equal(model.encoder.layer[3].attention.self.qkv.weight[:384], q)
    assert torch.equal(model.encoder.layer[3].attention.self.qkv.weight[384:768], k)


def test_missing_and_unreadable_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BertModel.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no BERT config"):
        BertModel.from_pretrained(tmp_path)
    _tiny().to_dict()
    (tmp_path / "config.json").write_text(json.dumps(_tiny().to_dict()))
    with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        BertModel.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="cannot read weights"):
        BertModel.from_pretrained(tmp_path)


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(default_path(), name), tmp_path / name)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 1024
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"encoder.layer.0.intermediate.dense.bias has shape \[1536\] "
                                         r"but the config needs \[1024\]"):
        BertModel.from_pretrained(tmp_path)


def test_missing_tensor_is_an_error(tmp_path):
    model = BertModel(_tiny())
    model.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    del sd["encoder.layer.1.output.dense.weight"]
    from safetensors.torch import save_file
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="lacks.*encoder.layer.1.output.dense.weight"):
        BertModel.from_pretrained(tmp_path)


def test_unsupported_configs():
    with pytest.raises(ValueError, match="position_embedding_type"):
        BertConfig.from_dict({"position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="not a multiple"):
        BertConfig(hidden_size=100, num_attention_heads=12)
