"""Docstring layout for the API reference: a Griffe extension that docs/api.md loads.

grokscope's docstrings are written for ``help()`` and doctest: examples are bare ``>>>`` blocks and a
list may follow a line of text directly. Markdown would read the first as nested quotations and the
second as one paragraph. While mkdocstrings collects the package, this extension fences every doctest
block as ``pycon`` code and puts a blank line before a list that follows text. The words are unchanged.
"""

import re

import griffe

_LIST_ITEM = re.compile(r"^(?:[-*] |\d+\. )")


def _is_list_item(line: str) -> bool:
    return bool(_LIST_ITEM.match(line))


def reformat(text: str) -> str:
    """``text`` with doctest blocks fenced and a blank line before each top-level list.

    A doctest block runs from a line starting with ``>>>`` to the next blank line; its indentation is
    kept so that blocks inside sections (Args:, Returns:) stay inside them.
    """
    lines, out, in_fence, i = text.split("\n"), [], False, 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        if stripped.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and stripped.startswith(">>>"):
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            if not indent and out and out[-1].strip():
                out.append("")
            out += [indent + "```pycon", *block, indent + "```"]
            continue
        elif not in_fence and _is_list_item(line) and out and out[-1].strip():
            previous = out[-1]
            if not previous[:1].isspace() and not _is_list_item(previous):
                out.append("")
        out.append(line)
        i += 1
    return "\n".join(out)


class DocstringLayout(griffe.Extension):
    """Apply ``reformat`` to the docstring of every object as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = reformat(obj.docstring.value)
