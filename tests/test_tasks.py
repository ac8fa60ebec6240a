"""Task specs, question/gt parsing and few-shot prompts, on small made-up fixtures.

Expected strings are written out literally from the harness's rules: prompt = exemplar file
stripped + two blank lines + query; the file is read as-is (backslashes untouched).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from rho_jax.evaluation import task_rules
from rho_jax.evaluation.task_config import DEFAULT_STOP, parse_task
from rho_jax.evaluation.tasks import TaskError, build_samples, load_task, shipped_task_names

TABLE1 = ["asdiv", "gsm8k", "math", "mathqa", "mawps", "mmlu_stem", "sat_math", "svamp", "tabmwp"]
QA_TEMPLATE = "Question: {question}\nAnswer:"
PS_TEMPLATE = "Problem:\n{question}\nSolution:"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


QA_EXEMPLARS = ("\n\nQuestion: A box has 2 pens and gets 3 more. How many pens?\n"
                "Answer: 2 + 3 = 5. The answer is 5.\n\n\n"
                "Question: Tom had 9 cards and lost 4. How many are left?\n"
                "Answer: 9 - 4 = 5. The answer is 5.\n\n")


@pytest.fixture
def qa_task(tmp_path: Path) -> tuple[Path, Path]:
    """(data dir, fewshot dir) for the shipped gsm8k spec: 3 rows, one exemplar file with 2 exemplars."""
    write_jsonl(tmp_path / "data" / "gsm8k" / "test.jsonl", [
        {"question": "Ann has 4 apples and buys 6. How many now?", "answer": "4 + 6 = 10\n#### 10", "idx": 0},
        {"question": "  Bo runs 3 km a day. How far in 2 days?\n", "answer": "3 * 2 = 6\n#### 6", "idx": 1},
        {"question": "Cy pays 1,200 dollars in 4 parts. How much each?", "answer": "1200 / 4 = 300\n#### 300", "idx": 2},
    ])
    (tmp_path / "shots").mkdir()
    (tmp_path / "shots" / "gsm8k.md").write_text(QA_EXEMPLARS, encoding="utf-8")
    return tmp_path / "data", tmp_path / "shots"


def test_question_answer_prompt_is_byte_exact(qa_task: tuple[Path, Path]) -> None:
    data, shots = qa_task
    samples = build_samples(load_task("gsm8k"), data_dir=data, fewshot_dir=shots)
    assert [s.idx for s in samples] == [0, 1, 2]
    assert samples[0].prompt == (
        "Question: A box has 2 pens and gets 3 more. How many pens?\n"
        "Answer: 2 + 3 = 5. The answer is 5.\n\n\n"
        "Question: Tom had 9 cards and lost 4. How many are left?\n"
        "Answer: 9 - 4 = 5. The answer is 5.\n\n\n"
        "Question: Ann has 4 apples and buys 6. How many now?\nAnswer:")
    # The question is stripped; the gt is the normalized text after ####; gt_cot the text before it.
    assert samples[1].question == "Bo runs 3 km a day. How far in 2 days?"
    assert samples[1].prompt.endswith("\n\n\nQuestion: Bo runs 3 km a day. How far in 2 days?\nAnswer:")
    assert [s.gt for s in samples] == ["10", "6", "300"]
    assert samples[2].fields == {"gt_cot": "1200 / 4 = 300", "answer": "1200 / 4 = 300\n#### 300"}


def test_limit_takes_the_first_rows_in_idx_order(tmp_path: Path, qa_task: tuple[Path, Path]) -> None:
    data, shots = qa_task
    path = data / "gsm8k" / "test.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[2] + lines[0] + lines[1])  # idx 2, 0, 1 in the file: sorted by idx
    samples = build_samples(load_task("gsm8k"), data_dir=data, fewshot_dir=shots, limit=2)
    assert [s.idx for s in samples] == [0, 1]
    with pytest.raises(TaskError, match="limit must be a positive integer"):
        build_samples(load_task("gsm8k"), data_dir=data, fewshot_dir=shots, limit=0)


def math_like_spec(tmp_path: Path, extra: str = "") -> Path:
    return write_yaml(tmp_path / "mini_math.yaml", (
        "name: mini_math\n"
        "description: two made-up competition problems\n"
        "source: {file: mini/problems.jsonl}\n"
        "question: \"{problem}\"\n"
        "gt: {field: solution, rule: boxed_in}\n"
        "query_template: \"Problem:\\n{question}\\nSolution:\"\n"
        "kind: latex\n"
        "fewshot_file: mini.md\n"
        "copy_fields: [level]\n" + extra))


def test_user_yaml_problem_solution_task_end_to_end(tmp_path: Path) -> None:
    """A user's task needs only a YAML file; exemplar backslashes are kept exactly as in the file."""
    write_jsonl(tmp_path / "data" / "mini" / "problems.jsonl", [  # no idx: rows are numbered in file order
        {"problem": "What is half of one?", "solution": "Half of 1 is $\\boxed{\\dfrac{1}{2}}$.", "level": 1},
        {"problem": "Is 7 prime? Answer yes or no.", "solution": "It has no divisors, so $\\boxed{\\text{yes}}$.",
         "level": 2},
    ])
    shots = tmp_path / "shots"
    shots.mkdir()
    # Literal double backslashes, as in the harness's Minerva exemplar file.
    (shots / "mini.md").write_text("Problem:\nFind $\\\\frac{2}{4}$.\nSolution:\n"
                                   "It is $\\\\boxed{\\\\frac{1}{2}}$.\n"
                                   "Final Answer: The final answer is $\\\\frac{1}{2}$. I hope it is correct.\n",
                                   encoding="utf-8")
    spec = load_task(str(math_like_spec(tmp_path)))
    assert (spec.name, spec.kind, spec.stop, spec.max_new_tokens) == ("mini_math", "latex", DEFAULT_STOP, 1024)
    samples = build_samples(spec, data_dir=tmp_path / "data", fewshot_dir=shots)
    assert samples[0].prompt == ("Problem:\nFind $\\\\frac{2}{4}$.\nSolution:\nIt is $\\\\boxed{\\\\frac{1}{2}}$.\n"
                                 "Final Answer: The final answer is $\\\\frac{1}{2}$. I hope it is correct.\n\n\n"
                                 "Problem:\nWhat is half of one?\nSolution:")
    assert [s.idx for s in samples] == [0, 1]
    assert samples[0].gt == "\\frac{1}{2}"  # \dfrac normalized to \frac
    # A yes/no ground truth adds the harness's hint to the question (and so to the prompt).
    assert samples[1].gt == "yes"
    assert samples[1].question == "Is 7 prime? Answer yes or no. (Yes or No)"
    assert samples[1].prompt.endswith("Problem:\nIs 7 prime? Answer yes or no. (Yes or No)\nSolution:")
    assert samples[1].fields == {"gt_cot": "It has no divisors, so $\\boxed{\\text{yes}}$.", "level": 2}


def test_exemplars_from_train_rows(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data" / "t" / "train.jsonl", [
        {"q": "One plus one?", "a": "1 + 1 = 2 #### 2"},
        {"q": "Two times three?", "a": "2 * 3 = 6 #### 6"},
        {"q": "Never used", "a": "x #### 0"},
    ])
    write_jsonl(tmp_path / "data" / "t" / "test.jsonl", [{"q": "Ten minus four?", "a": "10 - 4 = 6 #### 6"}])
    spec = load_task(str(write_yaml(tmp_path / "t.yaml", (
        "name: t\ndescription: d\nsource: {file: t/test.jsonl}\nquestion: '{q}'\n"
        "gt: {field: a, rule: after_hashes}\nquery_template: \"Question: {question}\\nAnswer:\"\nkind: number\n"
        "fewshot_from_train:\n  n: 2\n  source: {file: t/train.jsonl}\n"
        "  solution_template: ' {cot} The answer is {gt}.'\n"))))
    [sample] = build_samples(spec, data_dir=tmp_path / "data", fewshot_dir=None)
    assert sample.prompt == ("Question: One plus one?\nAnswer: 1 + 1 = 2 The answer is 2.\n\n\n"
                             "Question: Two times three?\nAnswer: 2 * 3 = 6 The answer is 6.\n\n\n"
                             "Question: Ten minus four?\nAnswer:")


def test_hf_source_reads_rows_with_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load_dataset(name: str, config: str | None, split: str) -> list[dict]:
        calls.append((name, config, split))
        return [{"question": "Three plus four?", "answer": "3 + 4 = 7\n#### 7"}]

    spec_path = write_yaml(tmp_path / "hf.yaml", (
        "name: hf_task\ndescription: d\nsource: {hf: someone/arith, config: main, split: test}\n"
        "question: '{question}'\ngt: {field: answer, rule: after_hashes}\n"
        "query_template: \"Question: {question}\\nAnswer:\"\nkind: number\n"))
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    [sample] = build_samples(load_task(str(spec_path)), data_dir=None, fewshot_dir=None)
    assert calls == [("someone/arith", "main", "test")]
    assert (sample.idx, sample.gt, sample.prompt) == (0, "7", "Question: Three plus four?\nAnswer:")
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(TaskError, match=r"needs the `datasets` package"):
        build_samples(load_task(str(spec_path)), data_dir=None, fewshot_dir=None)


@pytest.mark.parametrize(("rule", "value", "row", "expected"), [
    ("after_hashes", "Half of 8 is 4.\n#### 4", {}, ("Half of 8 is 4.", "4")),
    ("boxed_in", "So $x = \\boxed{\\frac{3}{4}}$.", {}, ("So $x = \\boxed{\\frac{3}{4}}$.", "\\frac{3}{4}")),
    ("boxed_in", "Then $\\boxed{5}$, and finally $\\boxed{\\{1, 2\\}}$.", {}, (None, "{1,2}")),
    ("choice_letter", "c", {}, (None, "C")),
    ("choice_letter", "E", {}, (None, "E")),
    ("choice_index", 2, {}, (None, "C")),
    ("number", 145.0, {}, (None, "145")),
    ("number", 0.25, {}, (None, "0.25")),
    ("number", 39, {}, (None, "39")),
    ("without_parentheses", "9 (apples)", {}, (None, "9")),
    ("tabmwp_answer", "3/4", {"ans_type": "decimal_number"}, (None, "0.75")),
    ("tabmwp_answer", "1,250", {"ans_type": "integer_number"}, (None, "1250")),
    ("tabmwp_answer", "25%", {"ans_type": "decimal_number"}, (None, "0.25")),
    ("tabmwp_answer", "7", {"ans_type": "integer_number"}, (None, "7")),
    ("tabmwp_answer", "Tuesday", {"ans_type": "extractive_text"}, (None, "Tuesday")),
])
def test_ground_truth_rules(rule: str, value: object, row: dict, expected: tuple[str | None, str]) -> None:
    cot, gt = task_rules.ground_truth(rule, "v", None, {"v": value, **row})
    assert gt == expected[1]
    if expected[0] is not None:
        assert cot == expected[0]


def test_cot_field_is_copied_stripped() -> None:
    assert task_rules.ground_truth("number", "v", "eq", {"v": 6.0, "eq": " ( 3.0 + 3.0 ) "}) == ("( 3.0 + 3.0 )", "6")


@pytest.mark.parametrize(("rule", "value", "row", "message"), [
    ("after_hashes", "no hashes here", {}, "'####' exactly once"),
    ("choice_letter", "F", {}, "choice letter A-E"),
    ("choice_index", 7, {}, "choice index 0-4"),
    ("number", None, {}, "number or a string"),
    ("tabmwp_answer", "lots", {"ans_type": "integer_number"}, "not a number"),
    ("tabmwp_answer", "3", {}, "ans_type"),
])
def test_ground_truth_rules_reject_bad_values(rule: str, value: object, row: dict, message: str) -> None:
    with pytest.raises(task_rules.RowError, match=message):
        task_rules.ground_truth(rule, "v", None, {"v": value, **row})


@pytest.mark.parametrize(("template", "row", "expected"), [
    ("{Body|strip|end_period} {Question|strip}", {"Body": " Sam has 3 hats ", "Question": "How many? "},
     "Sam has 3 hats. How many?"),
    ("{Body|strip|end_period} {Question|strip}", {"Body": "Sam has 3 hats.", "Question": "How many?"},
     "Sam has 3 hats. How many?"),
    ("{problem|capitalize_first|strip}", {"problem": "what is 2 + 2 ?"}, "What is 2 + 2 ?"),
    ("{problem|capitalize_first|strip}", {"problem": " what"}, "what"),  # capitalized first, then stripped
    ("{choices|lettered_choices}", {"choices": [" 4 ", 5, "six", "7"]}, "(A) 4, (B) 5, (C) six, (D) 7"),
    ("{options|sat_options}", {"options": " A) $x=1$ B) 2 C) -3 D) 4 and 5 "}, "(A) $x=1$ (B) 2 (C) -3 (D) 4 and 5"),
    ("{options|mathqa_options}", {"options": "a ) 12 , b ) 16 , c ) 18 , d ) 24 , e ) 26"},
     "(A) 12, (B) 16, (C) 18, (D) 24, (E) 26"),
    ("{options|mathqa_options}", {"options": "['a ) a ) 5 kg', 'b ) b ) 6 kg', 'c ) 7 kg']"}, "(A) 5 kg, (B) 6 kg, (C) 7 kg"),
    ("Read the following table {t|tabmwp_title}and answer a question:\n{table}\n{q}{c|tabmwp_choices}",
     {"t": "Pets", "table": "Pet | Count\ncat | 2", "q": "Which pet?", "c": ["cat", "dog"]},
     "Read the following table regarding \"Pets\" and answer a question:\nPet | Count\ncat | 2\n"
     "Which pet? Please select from the following options: ['cat', 'dog']"),
    ("Read the following table {t|tabmwp_title}and answer a question:\n{table}\n{q}{c|tabmwp_choices}",
     {"t": None, "table": "x | 1", "q": "How many?", "c": None},
     "Read the following table and answer a question:\nx | 1\nHow many?"),
    ("{{literal}} {q}", {"q": "x"}, "{literal} x"),
])
def test_question_templates_and_filters(template: str, row: dict, expected: str) -> None:
    assert task_rules.render(task_rules.parse_template(template), row) == expected


def test_true_false_and_yes_no_hints() -> None:
    assert task_rules.finish_question("Is 4 even? ", "True") == "Is 4 even?  (True or False)"
    assert task_rules.finish_question("Is 5 even?", "no") == "Is 5 even? (Yes or No)"
    assert task_rules.finish_question(" How many? ", "7") == "How many?"


def test_shipped_specs() -> None:
    assert shipped_task_names() == TABLE1
    templates = {QA_TEMPLATE: "gsm8k.md", PS_TEMPLATE: None}
    for name in TABLE1:
        spec = load_task(name)
        assert spec.name == name and spec.description
        assert spec.kind == ("latex" if name == "math" else "choice" if name in ("mathqa", "mmlu_stem", "sat_math")
                             else "number")
        assert spec.query_template in templates
        if templates[spec.query_template]:  # the Question:/Answer: tasks all use the GSM8K exemplars
            assert spec.fewshot_file == "gsm8k.md"
        assert spec.source.file is not None and spec.source.file.endswith("/test.jsonl")
        assert spec.stop == ("</s>", "\n\nQuestion:", "\n\nProblem:") and spec.max_new_tokens == 1024
    assert (load_task("math").source.file, load_task("math").fewshot_file) == ("math_oai/test.jsonl", "minerva_math.md")
    assert load_task("sat_math").fewshot_file == "mmlu_stem.md"


def test_unknown_task_lists_the_shipped_ones(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="unknown task 'gsm9k'; shipped tasks: asdiv, gsm8k, math, .*tabmwp"):
        load_task("gsm9k")
    with pytest.raises(TaskError, match="task file .*nope.yaml does not exist; shipped tasks: asdiv"):
        load_task(str(tmp_path / "nope.yaml"))


def test_missing_data_file_names_path_and_task(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"task 'gsm8k': data file .*gsm8k/test.jsonl does not exist"):
        build_samples(load_task("gsm8k"), data_dir=tmp_path, fewshot_dir=tmp_path)
    with pytest.raises(TaskError, match="give --data-dir"):
        build_samples(load_task("gsm8k"), data_dir=None, fewshot_dir=tmp_path)


def test_row_without_question_field_names_file_line_and_field(qa_task: tuple[Path, Path]) -> None:
    data, shots = qa_task
    write_jsonl(data / "gsm8k" / "test.jsonl", [{"question": "Fine?", "answer": "#### 1", "idx": 0},
                                                {"query": "Misnamed?", "answer": "#### 2", "idx": 1}])
    with pytest.raises(TaskError, match=r"gsm8k/test.jsonl, line 2: row has no field 'question'"):
        build_samples(load_task("gsm8k"), data_dir=data, fewshot_dir=shots)


def test_bad_row_values_name_file_and_line(qa_task: tuple[Path, Path]) -> None:
    data, shots = qa_task
    write_jsonl(data / "gsm8k" / "test.jsonl", [{"question": "Q?", "answer": "no final answer", "idx": 0}])
    with pytest.raises(TaskError, match=r"test.jsonl, line 1: field 'answer' must contain '####' exactly once"):
        build_samples(load_task("gsm8k"), data_dir=data, fewshot_dir=shots)
    (data / "gsm8k" / "test.jsonl").write_text('{"question": "Q?", "answer": "#### 1", "idx": 0}\n{not json\n')
    with pytest.raises(TaskError, match=r"test.jsonl, line 2: not valid JSON"):
        build_samples(load_task("gsm8k"), data_dir=data, fewshot_dir=shots)


@pytest.mark.parametrize(("text", "message"), [
    ("", "is empty"),
    ("  \n\n ", "is empty"),
    ("Q: 1+1?\nA: 2.\n", "does not start with an exemplar; its first line should begin with 'Question: '"),
    ("Question: 1+1?\nAnswer: 2.\nQuestion: 2+2?\nAnswer: 4.\n", "exemplar 1 .* runs into another 'Question: ' line"),
    ("Question: 1+1?\nAnswer: 2.\n\n\nQuestion: 2+2? The answer is 4.\n", r"exemplar 2 has no '\\nAnswer:'"),
    ("Problem:\n1+1?\nSolution:\n2.\n", "should begin with 'Question: '"),  # another task's template
])
def test_malformed_exemplar_file(qa_task: tuple[Path, Path], text: str, message: str) -> None:
    data, shots = qa_task
    (shots / "gsm8k.md").write_text(text, encoding="utf-8")
    with pytest.raises(TaskError, match=f"task 'gsm8k': exemplar file .*gsm8k.md.*{message}"):
        build_samples(load_task("gsm8k"), data_dir=data, fewshot_dir=shots)


def test_exemplar_solutions_may_contain_blank_lines(qa_task: tuple[Path, Path]) -> None:
    data, shots = qa_task
    text = "Question: 1+1?\nAnswer: First,\n\n1 + 1 = 2.\n\nThe answer is 2.\n\n\nQuestion: 2+2?\nAnswer: 4."
    (shots / "gsm8k.md").write_text(text, encoding="utf-8")
    samples = build_samples(load_task("gsm8k"), data_dir=data, fewshot_dir=shots, limit=1)
    assert samples[0].prompt == text + "\n\n\nQuestion: Ann has 4 apples and buys 6. How many now?\nAnswer:"
    with pytest.raises(TaskError, match=r"exemplar file .*missing.md does not exist"):
        build_samples(load_task(str(write_yaml(shots / "m.yaml", load_task_yaml_with(fewshot_file="missing.md")))),
                      data_dir=data, fewshot_dir=shots)


def load_task_yaml_with(**overrides: str) -> str:
    keys = {"name": "g", "description": "d", "source": "{file: gsm8k/test.jsonl}", "question": "'{question}'",
            "gt": "{field: answer, rule: after_hashes}", "query_template": '"Question: {question}\\nAnswer:"',
            "kind": "number", **overrides}
    return "".join(f"{key}: {value}\n" for key, value in keys.items() if value is not None)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"answer_kind": "number"}, "`answer_kind` is not a known key; allowed here: name, description"),
    ({"kind": None}, "`kind` is missing"),
    ({"kind": "integer"}, "`kind` is 'integer'; allowed: number, latex, choice"),
    ({"question": "{question}"}, "`question` must be a non-empty string.*quote templates"),
    ({"question": "'{question|shout}'"}, "unknown filter.*shout"),
    ({"gt": "{field: answer, rule: hashes}"}, "`gt.rule` is 'hashes'; allowed: after_hashes"),
    ({"gt": "{field: answer, rule: after_hashes, cot: x}"}, "`gt.cot` is not a known key"),
    ({"gt": "{field: answer, rule: after_hashes, cot_field: x}"}, "`gt.cot_field` is not allowed with rule after_hashes"),
    ({"source": "{file: a.jsonl, hf: b}"}, "`source` must name exactly one of"),
    ({"source": "{hf: b}"}, "`source.split` is missing"),
    ({"query_template": "'Question: {q}'"}, "exactly one {question} slot"),
    ({"max_new_tokens": "lots"}, "`max_new_tokens` must be a positive integer"),
    ({"stop": "'</s>'"}, "`stop` must be a list of non-empty strings"),
    ({"fewshot_from_train": "{n: 2, source: {file: t.jsonl}, solution_template: ' {answer}'}"}, "only use the slots"),
])
def test_bad_yaml_names_file_and_key(tmp_path: Path, overrides: dict, message: str) -> None:
    path = write_yaml(tmp_path / "bad.yaml", load_task_yaml_with(**overrides))
    with pytest.raises(TaskError, match=f"bad.yaml: .*{message}"):
        load_task(str(path))


def test_yaml_must_be_a_mapping() -> None:
    with pytest.raises(TaskError, match="x.yaml: must be a mapping"):
        parse_task("- a\n- b\n", "x.yaml")
    with pytest.raises(TaskError, match="x.yaml: not valid YAML"):
        parse_task("name: [unclosed\n", "x.yaml")
