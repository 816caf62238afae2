"""analysis/compile_table.py on stored summaries: what each framework compiled, and what new shapes cost."""
from __future__ import annotations

from db.models import Run
from analysis.compile_table import compile_frame, compile_sentence

COMPILED = {"tool": "torch.compile", "frames": 3, "compiled_frames": 3, "unique_graphs": 3, "graph_breaks": 0,
            "not_compiled": [], "compile_s": 5.05}
LSTM = {"tool": "torch.compile", "frames": 1, "compiled_frames": 0, "unique_graphs": 0, "graph_breaks": 0,
        "not_compiled": ["Attempted to wrap RNN, GRU, or LSTM"], "compile_s": 0.1}
XLA = {"tool": "tf.function", "traces": {"step": 1, "predict": 1, "gradients": 0}, "retraces": 0,
       "xla_shapes": {"step": [[29, 8, 8, 1], [32, 8, 8, 1]]}, "xla_executables": 3}
SHAPES = {"distinct": 2, "first_seen": [{"step": 1, "shape": [32, 64], "ms": 2265.3},
                                        {"step": 45, "shape": [29, 64], "ms": 2660.0}], "later_shapes_extra_ms": 2658.9}


def run(run_id: int, framework: str, summary: dict) -> Run:
    return Run(id=run_id, framework=framework, model="mlp", dataset="digits", status="finished", summary=summary,
               spec={}, total_epochs=1)


def test_each_framework_says_what_it_compiled_in_its_own_terms():
    runs = [run(1, "torch", {"compile_events": COMPILED, "shapes": SHAPES}),
            run(2, "tensorflow", {"compile_events": XLA, "shapes": {**SHAPES, "later_shapes_extra_ms": 508.3}}),
            run(3, "torch", {"compile_events": {}, "shapes": {"distinct": 1, "first_seen": [],
                                                              "later_shapes_extra_ms": None}}),
            run(4, "torch", {})]  # trained before compile events were counted: no row
    frame = compile_frame(runs, {1: "PyTorch compiled", 2: "TensorFlow xla", 3: "PyTorch eager", 4: "old"})
    assert frame["run"].tolist() == ["#1 PyTorch compiled", "#2 TensorFlow xla", "#3 PyTorch eager"]
    assert frame["compiled"].tolist() == ["3 of 3 frames (3 graphs), 0 graph breaks",
                                          "step traced 1×, 0 retraces; 3 XLA executables (one per input shape)", ""]
    assert frame["compiler"].tolist() == ["torch.compile", "tf.function", "none (eager)"]
    sentence = compile_sentence(frame)
    assert "#1 PyTorch compiled: the steps that met a new input shape took 2,659 ms more" in sentence
    assert "#2 TensorFlow xla: the steps that met a new input shape took 508 ms more" in sentence
    assert "#3" not in sentence


def test_a_model_torch_compile_did_not_capture_is_said():
    frame = compile_frame([run(5, "torch", {"compile_events": LSTM})], {5: "PyTorch compiled lstm"})
    assert frame.loc[0, "compiled"] == "0 of 1 frames (0 graphs), 0 graph breaks"
    assert "left part of the model uncompiled (Attempted to wrap RNN, GRU, or LSTM)" in compile_sentence(frame)
