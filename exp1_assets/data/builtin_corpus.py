"""A deterministic, learnable synthetic corpus in OpenHermes-2.5's raw row format.

Why: the real corpus is 1.9 GB and the Hub is often unreachable; the graph must run end to end
on a laptop CPU. So this module generates rows with OpenHermes' schema (its mostly-null columns,
`from` in system|human|gpt) whose answers are *determined by the prompt* with one consistent
phrasing per task family. A few-million-parameter model trained for minutes can then get
held-out prompts (unseen numbers, words, phrasings) right, and `answer` lets evaluation measure
exact-answer accuracy.

Families: arithmetic, comparison, word reversal, spelling, list sorting, counting, unit
conversion, a fictional knowledge base (invented countries asked with several phrasings),
yes/no reasoning, templated stories, summaries (copy the key slots of a generated paragraph),
Python functions in ``` blocks, long country comparisons, and multi-turn follow-ups.
About 20% of rows carry a system prompt and about 15% are multi-turn.

>>> rows = list(generate_rows(size=3, seed=0))
>>> [r["task"] for r in rows] == [r["task"] for r in generate_rows(size=3, seed=0)]
True
>>> sorted(rows[0]) == sorted(OPENHERMES_COLUMNS + ("task", "answer"))
True
>>> rows[0]["answer"] in rows[0]["conversations"][-1]["value"]
True
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any

# The real dataset's columns; all but conversations/source/category/id are null here too.
OPENHERMES_COLUMNS = (
    "conversations", "system_prompt", "source", "category", "skip_prompt_formatting", "id",
    "hash", "model_name", "title", "topic", "views", "language", "custom_instruction",
    "avatarUrl", "idx", "model",
)
SOURCE = "builtin-synthetic"
SYSTEM_FRACTION, MULTI_TURN_FRACTION = 0.20, 0.15

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a concise assistant. Answer clearly.",
    "You are an AI assistant that follows instructions carefully.",
    "You are a friendly tutor who gives correct answers.",
    "Answer the user's question accurately.",
)
# Politeness wrappers add prompt variety without changing the answer.
PREFIXES = ("", "", "", "Quick question: ", "Please answer: ", "Hi! ", "I need help. ")
WORDS = (
    "apple", "river", "stone", "cloud", "garden", "planet", "window", "forest", "candle",
    "silver", "bridge", "rocket", "pencil", "dragon", "marble", "meadow", "harbor", "lantern",
    "puzzle", "tiger", "violin", "castle", "orange", "winter", "summer", "anchor", "falcon",
    "ginger", "jacket", "kettle", "lemon", "mirror", "needle", "ocean", "pepper", "quartz",
    "ribbon", "saddle", "tunnel", "velvet", "wagon", "yellow", "zebra", "basket", "copper",
    "desert", "engine", "feather", "glacier", "hammer", "island", "jungle", "kitten", "ladder",
    "monkey", "nectar", "oyster", "parrot", "rabbit", "spider", "turtle", "walnut", "button",
)
ITEMS = ("apples", "pears", "coins", "books", "cups", "stones", "shells", "keys", "pens", "hats")
NAMES = ("Mira", "Tomas", "Lena", "Oskar", "Ivy", "Pip", "Nadia", "Felix", "Rosa", "Bram",
         "Juno", "Kai", "Elsa", "Hugo", "Tara", "Otto", "Wren", "Alma", "Finn", "Zora")
ANIMALS = ("fox", "owl", "bear", "rabbit", "otter", "wolf", "cat", "mouse", "deer", "hedgehog")
ADJECTIVES = ("brave", "curious", "clever", "gentle", "tiny", "cheerful", "shy", "quick")
PLACES = ("a quiet forest", "a busy city", "a small village", "a snowy mountain",
          "a sunny island", "an old library", "a green valley", "a windy harbor")
HOBBIES = ("painting", "singing", "reading", "climbing trees", "baking bread", "counting stars")
JOBS = ("baker", "teacher", "doctor", "farmer", "painter", "sailor", "engineer", "librarian")
EVENTS = ("opened a shop", "built a bridge", "wrote a book", "started a school",
          "planted an orchard", "founded a choir")
FILLER = (
    "The weather that year was mild, and the markets were full.",
    "Many visitors came from the nearby hills to see what was new.",
    "Local newspapers wrote about it for several weeks.",
    "Children in the town still tell the story to their friends.",
    "Some neighbors were doubtful at first, but they soon changed their minds.",
    "The project needed patience, careful planning and a lot of help.",
    "Over time the place became a small landmark of the region.",
    "Old photographs of that day still hang in the town hall.",
)
UNITS = (  # (from, to, factor, max value): small factors keep the answers learnable
    ("kilometers", "meters", 1000, 99), ("kilograms", "grams", 1000, 99),
    ("liters", "milliliters", 1000, 99), ("meters", "centimeters", 100, 99),
    ("weeks", "days", 7, 12), ("hours", "minutes", 60, 12), ("days", "hours", 24, 10),
)
CODE_OPS = (  # (name stem, what it does, signature, body)
    ("sum", "returns the sum of two numbers", "a, b", "return a + b"),
    ("difference", "returns the difference of two numbers", "a, b", "return a - b"),
    ("product", "returns the product of two numbers", "a, b", "return a * b"),
    ("maximum", "returns the larger of two numbers", "a, b", "return max(a, b)"),
    ("square", "returns the square of a number", "x", "return x * x"),
    ("is_even", "checks whether a number is even", "n", "return n % 2 == 0"),
    ("reversed_text", "reverses a string", "text", "return text[::-1]"),
    ("length", "returns the length of a list", "items", "return len(items)"),
    ("total", "returns the sum of a list of numbers", "numbers", "return sum(numbers)"),
    ("first_item", "returns the first element of a list", "items", "return items[0]"),
)
CODE_VERBS = ("compute", "get", "calc", "find", "make", "return", "my", "do")
# Parameter names vary so the model learns to copy them, not to memorize one spelling.
CODE_ARGS = {"a, b": (("a", "b"), ("x", "y"), ("m", "n"), ("first", "second")),
             "x": (("x",), ("n",), ("value",), ("number",)),
             "n": (("n",), ("x",), ("number",), ("k",)),
             "text": (("text",), ("s",), ("word",), ("string",)),
             "items": (("items",), ("values",), ("xs",), ("elements",)),
             "numbers": (("numbers",), ("values",), ("nums",), ("xs",))}


SYLLABLES = ("vel", "mo", "ra", "dri", "ssa", "ka", "lan", "tor", "en", "bi", "zu", "qua",
             "rel", "os", "ny", "fa", "gor", "li", "shan", "tem", "ix", "pa", "dor", "wen")


def _invent_knowledge_base(count: int = 80) -> tuple[dict[str, Any], ...]:
    """Invented countries: fixed across seeds so every corpus teaches the same facts."""
    rng = random.Random(2_5)
    languages = ("Velish", "Kandric", "Oromi", "Tessan", "Lurian", "Mabric", "Zunese", "Pelic")
    currencies = ("crown", "mark", "florin", "shell", "dinar", "talon", "lira", "rune")
    used: set[str] = set()

    def invent(parts: int) -> str:
        while True:
            name = "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()
            if name not in used:
                used.add(name)
                return name

    return tuple(
        {"country": invent(3), "capital": invent(2), "population": rng.randint(1, 99),
         "language": rng.choice(languages), "currency": rng.choice(currencies)}
        for _ in range(count)
    )


KNOWLEDGE_BASE = _invent_knowledge_base()
KB_QUESTIONS = {  # attribute -> (phrasings, answer sentence); {c} is the country
    "capital": (("What is the capital of {c}?", "Name the capital city of {c}.",
                 "Which city is the capital of {c}?", "Tell me the capital of {c}."),
                "The capital of {c} is {v}."),
    "population": (("What is the population of {c}?", "How many people live in {c}?",
                    "How large is the population of {c}?"),
                   "The population of {c} is {v} million."),
    "language": (("What language is spoken in {c}?", "Which language do people speak in {c}?",
                  "What is the main language of {c}?"), "The main language of {c} is {v}."),
    "currency": (("What currency does {c} use?", "What is the currency of {c}?",
                  "Which money is used in {c}?"), "The currency of {c} is the {v}."),
}


def _kb_value(country: dict[str, Any], attribute: str) -> str:
    return str(country[attribute])


# Every family: rng -> (turns as [(role, text)], answer). Roles are OpenHermes' human/gpt.
Turns = list[tuple[str, str]]


def _qa(ask: str, reply: str) -> Turns:
    return [("human", ask), ("gpt", reply)]


def _yes(flag: bool) -> str:
    return "Yes" if flag else "No"


def _arithmetic(rng: random.Random) -> tuple[Turns, str]:
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
    else:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        a, b = (max(a, b), min(a, b)) if op == "-" else (a, b)  # no negative results
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    ask = rng.choice(("What is {a} {op} {b}?", "Calculate {a} {op} {b}.", "Compute {a} {op} {b}."))
    return _qa(ask.format(a=a, op=op, b=b), f"{a} {op} {b} = {value}."), str(value)


def _comparison(rng: random.Random) -> tuple[Turns, str]:
    a, b = rng.sample(range(100), 2)
    ask = rng.choice(("Which is larger, {a} or {b}?", "Which number is bigger: {a} or {b}?"))
    big, small = max(a, b), min(a, b)
    return _qa(ask.format(a=a, b=b), f"{big} is larger than {small}."), str(big)


def _word(rng: random.Random) -> str:
    """Half real words, half invented ones, so reversal/spelling must generalize."""
    if rng.random() < 0.5:
        return rng.choice(WORDS)
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))


def _reverse_word(rng: random.Random) -> tuple[Turns, str]:
    word = _word(rng)
    ask = rng.choice(("Reverse the word '{w}'.", "Write '{w}' backwards.",
                      "What is '{w}' spelled backwards?"))
    return _qa(ask.format(w=word), f"The word '{word}' reversed is '{word[::-1]}'."), word[::-1]


def _spell_word(rng: random.Random) -> tuple[Turns, str]:
    word = _word(rng)
    ask = rng.choice(("Spell the word '{w}' letter by letter.", "How do you spell '{w}'? Use dashes."))
    spelled = "-".join(word)
    return _qa(ask.format(w=word), f"'{word}' is spelled {spelled}."), spelled


def _sort_list(rng: random.Random) -> tuple[Turns, str]:
    numbers = rng.sample(range(100), rng.randint(3, 6))
    shown, ordered = ", ".join(map(str, numbers)), ", ".join(map(str, sorted(numbers)))
    ask = rng.choice(("Sort these numbers in ascending order: {n}.",
                      "Put these numbers in order from smallest to largest: {n}."))
    return _qa(ask.format(n=shown), f"In ascending order: {ordered}."), ordered


def _count_items(rng: random.Random) -> tuple[Turns, str]:
    count = rng.randint(1, 9)
    listed = ", ".join(rng.choice(WORDS) for _ in range(count))
    ask = rng.choice(("How many words are in this list: {l}?", "Count the words in this list: {l}."))
    reply = "There is 1 word in the list." if count == 1 else f"There are {count} words in the list."
    return _qa(ask.format(l=listed), reply), str(count)


def _unit_conversion(rng: random.Random) -> tuple[Turns, str]:
    src, dst, factor, top = rng.choice(UNITS)
    amount = rng.randint(1, top)
    ask = rng.choice(("Convert {n} {s} to {d}.", "How many {d} are in {n} {s}?"))
    value = amount * factor
    return _qa(ask.format(n=amount, s=src, d=dst), f"{amount} {src} is {value} {dst}."), str(value)


def _kb_fact(rng: random.Random) -> tuple[Turns, str]:
    country, attribute = rng.choice(KNOWLEDGE_BASE), rng.choice(tuple(KB_QUESTIONS))
    phrasings, sentence = KB_QUESTIONS[attribute]
    c, v = country["country"], _kb_value(country, attribute)
    return _qa(rng.choice(phrasings).format(c=c), sentence.format(c=c, v=v)), v


def _yes_no(rng: random.Random) -> tuple[Turns, str]:
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.sample(range(100), 2)
        relation = "greater" if a > b else "not greater"
        return _qa(f"Is {a} greater than {b}?", f"{_yes(a > b)}, {a} is {relation} than {b}."), _yes(a > b)
    if kind == 1:
        n = rng.randint(0, 999)
        even = n % 2 == 0
        return _qa(f"Is {n} an even number?", f"{_yes(even)}, {n} is {'even' if even else 'odd'}."), _yes(even)
    country, other = rng.sample(KNOWLEDGE_BASE, 2)
    name, city = country["country"], rng.choice((country, other))["capital"]
    right = city == country["capital"]
    reply = (f"Yes, {city} is the capital of {name}." if right
             else f"No, the capital of {name} is {country['capital']}.")
    return _qa(f"Is {city} the capital of {name}?", reply), _yes(right)


def _story(rng: random.Random) -> tuple[Turns, str]:
    name, adj, animal = rng.choice(NAMES), rng.choice(ADJECTIVES), rng.choice(ANIMALS)
    place, hobby, longer = rng.choice(PLACES), rng.choice(HOBBIES), rng.random() < 0.3
    ask = (f"Write a {'long' if longer else 'short'} story about a {adj} {animal} named {name} "
           f"who lives in {place} and loves {hobby}.")
    text = (f"Once upon a time, a {adj} {animal} named {name} lived in {place}. "
            f"More than anything, {name} loved {hobby}. Every day, {name} spent hours {hobby}, "
            f"and the other animals came to watch. In the end, everyone agreed that {name} was "
            f"the most {adj} {animal} they had ever met.")
    if longer:
        text += (f"\n\nOne evening, a storm reached {place}. The other animals were afraid, but "
                 f"{name} stayed calm and kept {hobby} until the wind was gone.\n\n"
                 f"From that day on, whenever the sky grew dark, the animals of {place} "
                 f"remembered the {adj} {animal} named {name}, and they were never afraid again.")
    return _qa(ask, text), name


def _summary(rng: random.Random) -> tuple[Turns, str]:
    """A paragraph of one key sentence plus filler; the summary copies the key slots."""
    name, job, town = rng.choice(NAMES), rng.choice(JOBS), rng.choice(KNOWLEDGE_BASE)["capital"]
    event, year = rng.choice(EVENTS), rng.randint(1900, 2020)
    filler = [rng.choice(FILLER) for _ in range(rng.choice((1, 1, 2, 2, 3, 4, 6, 10, 16, 28, 44)))]
    paragraph = " ".join([f"In {year}, {name}, a {job} from {town}, {event}."] + filler)
    ask = f"Summarize the following text in one sentence.\n\n{paragraph}"
    return _qa(ask, f"{name}, a {job} from {town}, {event} in {year}."), name


def _python_code(rng: random.Random) -> tuple[Turns, str]:
    stem, does, args, body = rng.choice(CODE_OPS)
    name = f"{rng.choice(CODE_VERBS)}_{stem}"
    chosen = rng.choice(CODE_ARGS[args])
    # Rename the template's parameters (whole words only: "n" must not touch "len").
    renames = dict(zip(args.split(", "), chosen))
    body = re.sub(r"\b(" + "|".join(renames) + r")\b", lambda m: renames[m.group(1)], body)
    args = ", ".join(chosen)
    # The prompt names the parameters, so the whole response is determined by the prompt.
    ask = f"Write a Python function `{name}({args})` that {does}."
    text = (f"Here is the function:\n\n```python\ndef {name}({args}):\n    {body}\n```\n\n"
            f"The function `{name}` {does}.")
    return _qa(ask, text), body


def _comparison_report(rng: random.Random) -> tuple[Turns, str]:
    """Long rows (~1-2k characters): a detailed two-country comparison."""
    first, second = rng.sample(KNOWLEDGE_BASE, 2)
    paragraphs = [
        f"{c['country']} is a country whose capital is {c['capital']}. About {c['population']} "
        f"million people live there, and the main language is {c['language']}. People in "
        f"{c['country']} pay with the {c['currency']}, and the capital {c['capital']} is its "
        f"largest and busiest city, home to its government, its markets and its schools. "
        f"Travelers who visit {c['capital']} usually hear {c['language']} in the streets, "
        f"exchange their money for the {c['currency']} at the station, and learn that the "
        f"{c['population']} million people of {c['country']} are proud of their capital."
        for c in (first, second)
    ]
    bigger = max(first, second, key=lambda c: (c["population"], c["country"]))
    paragraphs.append(f"In summary, {bigger['country']} has the larger population of the two.")
    ask = f"Write a detailed comparison of {first['country']} and {second['country']}."
    return [("human", ask), ("gpt", "\n\n".join(paragraphs))], bigger["country"]


FAMILIES = (  # (task name, generator, weight)
    ("arithmetic", _arithmetic, 10), ("comparison", _comparison, 7),
    ("reverse_word", _reverse_word, 6), ("spell_word", _spell_word, 5),
    ("sort_list", _sort_list, 7), ("count_items", _count_items, 6),
    ("unit_conversion", _unit_conversion, 7), ("knowledge", _kb_fact, 14),
    ("yes_no", _yes_no, 8), ("story", _story, 6), ("summary", _summary, 7),
    ("python_code", _python_code, 7), ("comparison_report", _comparison_report, 2),
)


def _multi_turn(rng: random.Random) -> tuple[Turns, str]:
    """Follow-ups whose answers depend on the earlier turns (~15% of rows)."""
    kind = rng.randrange(3)
    if kind == 0:
        a, b, c = rng.randint(0, 50), rng.randint(0, 50), rng.randint(1, 20)
        turns = _qa(f"What is {a} + {b}?", f"{a} + {b} = {a + b}.")
        return turns + _qa(f"Now add {c} to that.", f"{a + b} + {c} = {a + b + c}."), str(a + b + c)
    if kind == 1:
        country, turns, answer = rng.choice(KNOWLEDGE_BASE), [], ""
        name = country["country"]
        for attribute in rng.sample(tuple(KB_QUESTIONS), rng.randint(2, 3)):
            phrasings, sentence = KB_QUESTIONS[attribute]
            ask = f"And what about its {attribute}?" if turns else phrasings[0].format(c=name)
            answer = _kb_value(country, attribute)
            turns += _qa(ask, sentence.format(c=name, v=answer))
        return turns, answer
    numbers = rng.sample(range(100), rng.randint(3, 6))
    up, down = sorted(numbers), sorted(numbers, reverse=True)
    up, down, shown = (", ".join(map(str, ns)) for ns in (up, down, numbers))
    turns = _qa(f"Sort these numbers in ascending order: {shown}.", f"In ascending order: {up}.")
    return turns + _qa("Now sort them in descending order.", f"In descending order: {down}."), down


def generate_rows(*, size: int = 20_000, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Yield `size` raw OpenHermes-format rows; the same (size, seed) gives the same rows."""
    if size < 0:
        raise ValueError(f"size: must be >= 0, got {size}")
    rng = random.Random(seed)
    names = [name for name, _, _ in FAMILIES]
    makers = {name: make for name, make, _ in FAMILIES}
    weights = [weight for _, _, weight in FAMILIES]
    for index in range(size):
        if rng.random() < MULTI_TURN_FRACTION:
            task, (turns, answer) = "multi_turn", _multi_turn(rng)
        else:
            task = rng.choices(names, weights)[0]
            turns, answer = makers[task](rng)
        prefix = rng.choice(PREFIXES)
        turns[0] = ("human", prefix + turns[0][1])
        conversations = [{"from": role, "value": text, "weight": None} for role, text in turns]
        system_prompt = None
        if rng.random() < SYSTEM_FRACTION:
            # Like the real data: usually a system turn, sometimes the top-level column.
            system = rng.choice(SYSTEM_PROMPTS)
            if rng.random() < 0.75:
                conversations.insert(0, {"from": "system", "value": system, "weight": None})
            else:
                system_prompt = system
        row = dict.fromkeys(OPENHERMES_COLUMNS)
        row.update(conversations=conversations, system_prompt=system_prompt, source=SOURCE,
                   category=task, skip_prompt_formatting=False, id=f"builtin-{seed}-{index}",
                   task=task, answer=answer)
        yield row
