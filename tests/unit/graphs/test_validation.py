"""One test per ComfyUI validation error type, plus the accept paths."""

from __future__ import annotations


import pytest

from graphs.registry import default_registry
from graphs.validation import validate_workflow
from graphs.workflow import parse_workflow
from graphs.errors import WorkflowParseError
from tests.utils.workflows import DEMO_CHECKPOINT, example, example_names, txt2img

REG = default_registry()
FILES = {
    "checkpoints": [DEMO_CHECKPOINT, "genserve-demo-sd15"],
    "controlnet": ["genserve-demo-controlnet"],
    "loras": ["genserve-demo-lora.safetensors"],
    "vae": [],
    "input_images": ["example_pose.png", "example_edges.png", "example_source.png"],
}


def choices(source: str) -> list[str]:
    return FILES[source]


def validate(wf):
    return validate_workflow(parse_workflow(wf), REG, choices)


def only_error(result, node_id):
    errs = result.node_errors[node_id].errors
    assert len(errs) == 1, errs
    return errs[0]


@pytest.mark.parametrize("name", example_names())
def test_every_example_workflow_validates(name):
    result = validate(example(name))
    assert result.ok, result.node_errors
    assert result.node_errors == {}
    assert result.output_node_ids


def test_malformed_json_is_a_parse_error():
    with pytest.raises(WorkflowParseError, match="not valid JSON"):
        parse_workflow("{not json")


def test_top_level_list_is_a_parse_error():
    with pytest.raises(WorkflowParseError, match="JSON object"):
        parse_workflow("[1, 2]")


def test_ui_format_workflow_gets_a_helpful_message():
    with pytest.raises(WorkflowParseError, match="API Format"):
        parse_workflow({"nodes": [], "links": [], "version": 0.4})


def test_unknown_node_type_is_missing_node_type():
    wf = txt2img()
    wf["99"] = {"class_type": "MagicUpscaler9000", "inputs": {}}
    result = validate(wf)
    assert not result.ok
    assert result.error.type == "missing_node_type"
    assert "MagicUpscaler9000" in result.error.message


def test_node_without_class_type_is_invalid_prompt():
    wf = txt2img()
    wf["99"] = {"inputs": {}}
    result = validate(wf)
    assert result.error.type == "invalid_prompt"


def test_node_that_is_not_an_object_is_invalid_prompt():
    wf = txt2img()
    wf["99"] = 12
    assert validate(wf).error.type == "invalid_prompt"


def test_workflow_without_output_node_is_prompt_no_outputs():
    wf = txt2img()
    del wf["9"]
    result = validate(wf)
    assert not result.ok and result.error.type == "prompt_no_outputs"


def test_missing_required_input():
    wf = txt2img()
    del wf["3"]["inputs"]["steps"]
    result = validate(wf)
    assert result.error.type == "prompt_outputs_failed_validation"
    err = only_error(result, "3")
    assert err.type == "required_input_missing"
    assert err.extra_info["input_name"] == "steps"
    assert result.node_errors["3"].dependent_outputs == ["9"]
    assert result.node_errors["3"].class_type == "KSampler"


def test_bad_link_shape():
    wf = txt2img()
    wf["3"]["inputs"]["model"] = ["4", 0, 1]
    assert only_error(validate(wf), "3").type == "bad_linked_input"


def test_link_to_missing_node():
    wf = txt2img()
    wf["3"]["inputs"]["model"] = ["404", 0]
    err = only_error(validate(wf), "3")
    assert err.type == "bad_linked_input" and "404" in err.details


def test_link_slot_out_of_range():
    wf = txt2img()
    wf["3"]["inputs"]["model"] = ["4", 7]
    assert only_error(validate(wf), "3").type == "bad_linked_input"


def test_literal_where_a_link_is_required():
    wf = txt2img()
    wf["3"]["inputs"]["model"] = "my-model"
    assert only_error(validate(wf), "3").type == "bad_linked_input"


def test_return_type_mismatch():
    wf = txt2img()
    wf["3"]["inputs"]["model"] = ["4", 1]  # CLIP into MODEL
    err = only_error(validate(wf), "3")
    assert err.type == "return_type_mismatch"
    assert "received_type(CLIP) mismatch input_type(MODEL)" in err.details


def test_invalid_input_type():
    wf = txt2img()
    wf["3"]["inputs"]["steps"] = "twenty"
    err = only_error(validate(wf), "3")
    assert err.type == "invalid_input_type" and "INT" in err.message


def test_numeric_string_is_converted_like_comfyui():
    wf = txt2img()
    wf["3"]["inputs"]["steps"] = "12"
    assert validate(wf).ok


def test_value_smaller_than_min():
    wf = txt2img()
    wf["3"]["inputs"]["steps"] = 0
    assert only_error(validate(wf), "3").type == "value_smaller_than_min"


def test_value_bigger_than_max():
    wf = txt2img()
    wf["3"]["inputs"]["cfg"] = 1000.0
    assert only_error(validate(wf), "3").type == "value_bigger_than_max"


def test_unknown_sampler_is_value_not_in_list():
    wf = txt2img()
    wf["3"]["inputs"]["sampler_name"] = "euler_magic"
    assert only_error(validate(wf), "3").type == "value_not_in_list"


def test_missing_model_file_is_value_not_in_list():
    wf = txt2img()
    wf["4"]["inputs"]["ckpt_name"] = "v1-5-pruned-emaonly.safetensors"
    result = validate(wf)
    err = only_error(result, "4")
    assert err.type == "value_not_in_list"
    assert DEMO_CHECKPOINT in err.details


def test_custom_validation_failed():
    wf = example("controlnet_edges")
    wf["12"]["inputs"]["start_percent"] = 0.9
    wf["12"]["inputs"]["end_percent"] = 0.1
    assert only_error(validate(wf), "12").type == "custom_validation_failed"


def test_non_finite_prompt_emphasis_weight_is_refused_before_running():
    wf = txt2img()
    wf["6"]["inputs"]["text"] = "a (cat:nan) on a mat"
    err = only_error(validate(wf), "6")
    assert err.type == "custom_validation_failed" and "finite number" in err.details
    wf["6"]["inputs"]["text"] = "a (cat:1.3) on a ((mat))"
    assert validate(wf).ok


def test_path_traversal_in_filename_prefix_is_refused():
    wf = txt2img()
    wf["9"]["inputs"]["filename_prefix"] = "../../etc/evil"
    assert only_error(validate(wf), "9").type == "custom_validation_failed"


def test_cycle_is_reported():
    wf = txt2img()
    wf["3"]["inputs"]["latent_image"] = ["13", 0]
    wf["13"] = {"class_type": "LatentUpscale", "inputs": {"samples": ["3", 0], "upscale_method": "bilinear",
                                                         "width": 64, "height": 64, "crop": "disabled"}}
    result = validate(wf)
    assert not result.ok
    types = {e.type for ne in result.node_errors.values() for e in ne.errors}
    assert "dependency_cycle" in types


def test_only_root_causes_are_reported():
    wf = txt2img()
    wf["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
    result = validate(wf)
    assert set(result.node_errors) == {"4"}  # KSampler, VAEDecode, CLIPTextEncode fail only because of node 4


def test_one_valid_output_is_enough_and_the_other_is_reported():
    wf = txt2img()
    wf["30"] = {"class_type": "PreviewImage", "inputs": {"images": ["31", 0]}}
    wf["31"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 1]}}  # CLIP as VAE
    result = validate(wf)
    assert result.ok
    assert result.output_node_ids == ["9"]
    assert "31" in result.node_errors and result.node_errors["31"].dependent_outputs == ["30"]


def test_partial_execution_targets_limit_outputs():
    wf = example("lora_hires_fix")
    result = validate_workflow(parse_workflow(wf), REG, choices, partial_execution_targets=["24"])
    assert result.output_node_ids == ["24"]


def test_response_body_has_comfyui_shape():
    wf = txt2img()
    wf["3"]["inputs"]["steps"] = -1
    body = validate(wf).response_body()
    assert set(body) == {"error", "node_errors"}
    assert set(body["error"]) == {"type", "message", "details", "extra_info"}
    assert set(body["node_errors"]["3"]) == {"errors", "dependent_outputs", "class_type"}


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
