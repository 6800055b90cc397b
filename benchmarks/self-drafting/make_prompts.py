"""A larger self-distillation prompt set for `specdecode train ... --data FILE` (issue 12).

The built-in set (specdecode.training.prompts, 64 prompts) leaves the heads data-starved. This
script writes 512 instructions from templates crossed with topic lists, all written for this
project (none is a Spec-Bench prompt, none is taken from a dataset), over the kinds of task a
chat model meets: explaining, advising, writing, coding, arithmetic, translating short
sentences, rewriting and summarizing a given sentence, comparing, listing.

    python benchmarks/self-drafting/make_prompts.py > benchmarks/self-drafting/prompts-512.txt
"""

from __future__ import annotations

import itertools
import random

TOPICS = [
    "a bicycle gear system",
    "the tides",
    "compound interest",
    "a heat pump",
    "the immune system",
    "black holes",
    "a bread starter",
    "the stock market",
    "rainbows",
    "earthquakes",
    "a compiler",
    "public libraries",
    "coral reefs",
    "the printing press",
    "electric cars",
    "honey bees",
    "the moon's phases",
    "a credit score",
    "volcanoes",
    "the internet",
    "solar panels",
    "recycling plastic",
    "a sourdough loaf",
    "the human heart",
    "glaciers",
    "a hash table",
    "democracy",
    "the Roman aqueducts",
    "a thermostat",
    "sleep",
    "composting",
    "wind turbines",
]
AUDIENCES = ["a child", "a high-school student", "a busy manager", "a retired teacher"]
THINGS_TO_WRITE = [
    ("a short story", "a lost umbrella"),
    ("a poem", "the first snow"),
    ("a short story", "a robot gardener"),
    ("a diary entry", "a rainy Monday"),
    ("a short story", "two rival bakers"),
    ("a poem", "city lights"),
    ("a fable", "a patient tortoise"),
    ("a short story", "a map found in an attic"),
    ("a poem", "an old train station"),
    ("a product description", "a reusable water bottle"),
    ("a toast", "a friend's wedding"),
    ("a short story", "a dragon who is afraid of heights"),
    ("a blog post", "learning to cook"),
    ("a speech", "a school's sports day"),
    ("a letter", "a pen pal in another country"),
    ("a short story", "the last day of summer"),
]
EMAILS = [
    "asking for a day off next week",
    "thanking a team for finishing a project",
    "apologizing for a delayed delivery",
    "inviting neighbors to a garden party",
    "asking a landlord to fix a leaking tap",
    "following up after a job interview",
    "declining a meeting invitation politely",
    "requesting a refund for a broken kettle",
]
CODE = [
    "reverses a linked list",
    "counts the words in a text file",
    "merges two sorted lists",
    "returns the n-th Fibonacci number",
    "checks whether a number is prime",
    "removes duplicates from a list while keeping order",
    "computes the average of a list of numbers",
    "finds the most common character in a string",
    "converts Celsius to Fahrenheit",
    "flattens a nested list",
    "validates an email address with a regular expression",
    "sorts a list of dictionaries by a key",
    "reads a CSV file and sums one column",
    "implements binary search",
    "capitalizes every word in a sentence",
    "computes a factorial iteratively",
]
LANGUAGES = ["Python", "JavaScript", "Go", "Rust"]
SENTENCES = [
    "The library opens at nine o'clock every morning.",
    "My brother is learning to play the guitar.",
    "We missed the train because it was raining.",
    "Could you tell me where the nearest pharmacy is?",
    "The museum is closed on Mondays.",
    "I would like a cup of tea with milk, please.",
    "She has lived in this town for twenty years.",
    "Tomorrow we are going to visit our grandparents.",
    "The meeting was moved to Thursday afternoon.",
    "This soup needs a little more salt.",
    "The children played in the park until sunset.",
    "He forgot his keys at the office again.",
]
TARGET_LANGUAGES = ["French", "German", "Spanish", "Italian"]
PAIRS = [
    ("trains", "planes for travel within a country"),
    ("reading books", "listening to audiobooks"),
    ("renting", "buying a home"),
    ("tea", "coffee"),
    ("living in a city", "living in the countryside"),
    ("paper notes", "note-taking apps"),
    ("running", "swimming for fitness"),
    ("public schools", "home schooling"),
    ("cash", "card payments"),
    ("winter", "summer holidays"),
    ("email", "instant messaging at work"),
    ("gas stoves", "induction stoves"),
]
ADVICE = [
    "sleep better",
    "save money on groceries",
    "learn a new language",
    "prepare for a marathon",
    "keep houseplants alive",
    "stay focused while working from home",
    "make friends in a new city",
    "start a vegetable garden",
    "speak confidently in meetings",
    "organize a small kitchen",
    "reduce screen time",
    "plan a budget trip",
    "care for a new puppy",
    "write a good resume",
    "get better at chess",
    "cook rice perfectly",
]
PEOPLE = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana"]
ITEMS = [("apples", 0.4), ("notebooks", 2.5), ("tickets", 12.0), ("loaves of bread", 3.2), ("pens", 1.1)]


def prompts() -> list[str]:
    rng = random.Random(12)
    out: list[str] = []
    for topic, who in itertools.product(TOPICS, AUDIENCES):
        out.append(f"Explain {topic} to {who}.")
    for topic in TOPICS:
        out.append(f"Give three surprising facts about {topic}, each with a sentence of explanation.")
        out.append(f"Write a short quiz of four questions about {topic}, with the answers at the end.")
        out.append(f"What are the most common misconceptions about {topic}? Correct each one.")
    for (kind, subject), who in itertools.product(THINGS_TO_WRITE, ["", " for children"]):
        out.append(f"Write {kind} about {subject}{who}.")
    for email in EMAILS:
        out.append(f"Write a polite email {email}.")
        out.append(f"Write a short, friendly text message {email}.")
    for task, lang in itertools.product(CODE, LANGUAGES):
        out.append(f"Write a {lang} function that {task}, and explain how it works.")
    for sentence, lang in itertools.product(SENTENCES, TARGET_LANGUAGES):
        out.append(f"Translate into {lang}: {sentence}")
    for sentence in SENTENCES:
        out.append(f"Rewrite this sentence in three different styles (formal, casual, poetic): {sentence}")
    for a, b in PAIRS:
        out.append(f"Compare {a} and {b}: give the advantages and disadvantages of each.")
        out.append(f"Which is better, {a} or {b}? Argue for one side in a short paragraph.")
    for advice in ADVICE:
        out.append(f"How can I {advice}? Give practical steps.")
        out.append(f"List five common mistakes people make when they try to {advice}.")
    for person, (item, price) in itertools.product(PEOPLE, ITEMS):
        n, m = rng.randint(3, 19), rng.randint(2, 9)
        out.append(
            f"{person} buys {n} {item} at ${price:.2f} each and pays with a ${(n * price // 10 + 1) * 10:.0f} "
            f"note, then buys {m} more. How much did {person} spend in total, and how much change "
            "came back from the note? Show your steps."
        )
    for a, b in [(rng.randint(12, 99), rng.randint(12, 99)) for _ in range(24)]:
        out.append(f"A rectangle is {a} cm long and {b} cm wide. What are its area and perimeter? Explain.")
    seen: set[str] = set()
    unique = [p for p in out if not (p in seen or seen.add(p))]
    rng.shuffle(unique)
    return unique[:512]


if __name__ == "__main__":
    ps = prompts()
    assert len(ps) == 512, len(ps)
    print("\n".join(ps))
