"""The README starts with the two commands a new user runs, and .ci/run runs the test one exactly."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def code_blocks(text):
    blocks, inside, current = [], False, []
    for line in text.splitlines():
        if line.startswith("```"):
            if inside:
                blocks.append(current)
            inside, current = not inside, []
        elif inside:
            current.append(line)
    return blocks


def test_readme_commands_are_the_ones_ci_runs():
    readme = (ROOT / "README.md").read_text()
    run_block, test_block = code_blocks(readme)[:2]
    assert run_block == ["pip install torch==2.13.0 . && harness run"]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    setup, test = test_block
    assert setup in ci and test in ci
    assert ci.index(setup) < ci.index(test)
