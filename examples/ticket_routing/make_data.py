"""Generate the ticket-routing datasets: support tickets -> one of six team queues (house label names).

    python examples/ticket_routing/make_data.py

Deterministic (fixed seed). Training and validation rows are drawn from one set of phrasings;
``heldout.jsonl`` uses phrasings that appear in neither, so exact match on it measures whether a
model learned the routing rather than the sentences. Every row is a chat: the team's short system
prompt and the ticket as the prompt, the queue name as the completion (conversational
prompt-completion rows, so training learns the answer, not the tickets).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSTEM = ("Route the support ticket to one queue: billing, login, shipping, bug, feature, privacy. "
          "Answer with the queue name only.")
QUEUES = ("billing", "login", "shipping", "bug", "feature", "privacy")
SEED = 11
TRAIN_PER_QUEUE, VALIDATION_PER_QUEUE, HELDOUT_PER_QUEUE = 40, 6, 8

FILL = {
    "amount": ["$12.99", "$49", "$120.50", "EUR 30", "$7.45", "$299", "GBP 15", "$64.10"],
    "plan": ["Pro plan", "Team plan", "annual subscription", "Basic tier", "Business plan", "monthly plan"],
    "item": ["blue hoodie", "coffee grinder", "running shoes", "desk lamp", "phone case", "yoga mat",
             "backpack", "wireless earbuds", "cast iron pan", "board game"],
    "order": ["#48213", "#10977", "#66120", "#30554", "#91802", "#25571", "#77014", "#53390"],
    "days": ["three days", "a week", "two weeks", "10 days", "five days", "since Monday"],
    "device": ["iPhone", "Android phone", "laptop", "iPad", "work computer", "Chromebook"],
    "page": ["checkout page", "search bar", "settings screen", "order history", "wishlist", "cart",
             "product page", "invoice download button"],
    "wish": ["dark mode", "a gift wrapping option", "export to CSV", "a wishlist you can share",
             "Apple Pay", "a size guide on every product", "saved searches", "bulk ordering"],
    "data": ["my personal data", "my account data", "my order history and address", "all the data you hold on me",
             "my email and phone number"],
    "hi": ["", "Hi, ", "Hello, ", "Hey team, ", "Good morning. ", "Hi there! "],
    "bye": ["", " Thanks.", " Thank you!", " Please help.", " Cheers.", " Regards, Sam"],
}

TRAIN_TEMPLATES = {
    "billing": [
        "I was charged {amount} twice for my {plan}.",
        "Why did my card get billed {amount} this month?",
        "I need a refund for order {order}, it was charged but I cancelled.",
        "Can you send me an invoice for my {plan}?",
        "My payment of {amount} failed but the money left my account.",
        "How do I update the credit card on my {plan}?",
        "There is an unknown charge of {amount} on my statement.",
        "The discount code was not applied and I paid {amount} too much.",
        "Please refund the {amount} you took for my {plan}, I never used it.",
        "I need a receipt for tax purposes for order {order}.",
        "You charged me after I downgraded my {plan}.",
        "When will I get my money back for {order}?",
    ],
    "login": [
        "I can't log in to my account.",
        "The password reset email never arrives.",
        "My account is locked after too many attempts.",
        "I lost my {device} and can't get the two-factor code.",
        "It says my password is wrong but I just reset it.",
        "How do I change the email I use to sign in?",
        "The login page keeps sending me back to the start on my {device}.",
        "I get 'session expired' every time I try to sign in.",
        "My new {device} doesn't have my authenticator, so I'm stuck at the code screen.",
        "Your site says my credentials are invalid.",
        "I'm locked out of my profile and the reset link is expired.",
        "Can't access my account from my {device} anymore.",
    ],
    "shipping": [
        "Where is my order {order}? It's been {days}.",
        "My {item} was marked delivered but nothing arrived.",
        "Can I change the delivery address for order {order}?",
        "The tracking number for my {item} doesn't work.",
        "The parcel with my {item} arrived damaged.",
        "Order {order} still hasn't shipped after {days}.",
        "Do you deliver to Canada, and how long does it take?",
        "The courier left my {item} at the wrong house.",
        "My {item} is stuck at the depot, no tracking update for {days}.",
        "I'm still waiting for my {item}, it's been {days}.",
        "Please ship order {order} to my work address instead.",
        "The box was crushed and my {item} is broken.",
    ],
    "bug": [
        "The {page} crashes when I open it on my {device}.",
        "I get an error 500 on the {page}.",
        "The {page} is blank on my {device}.",
        "Clicking buy on the {page} does nothing.",
        "The app freezes on my {device} whenever I open the {page}.",
        "Prices on the {page} show as NaN.",
        "The {page} loads forever and then shows an error.",
        "Images don't load on the {page} since the last update.",
        "The {page} throws an error when I tap it.",
        "The app closes itself when I open the {page} on my {device}.",
        "Nothing renders on the {page}, just a white screen.",
        "Something is wrong with the {page}, it shows an exception.",
    ],
    "feature": [
        "Could you add {wish}?",
        "It would be great to have {wish}.",
        "Please consider adding {wish} to the app.",
        "Any plans to support {wish}?",
        "Suggestion: {wish} would make shopping easier.",
        "I'd love {wish}, other stores have it.",
        "Would you ever build {wish}?",
        "Feature idea: {wish}.",
        "Is {wish} coming to the mobile app?",
        "Please offer {wish}, I would use it every week.",
        "My team wants {wish}, is it planned?",
        "Request for the product team: {wish}.",
    ],
    "privacy": [
        "Please delete {data}.",
        "I want a copy of {data} under GDPR.",
        "How do I stop you from sharing {data} with partners?",
        "Remove {data} from your marketing lists.",
        "What do you do with {data}?",
        "I request erasure of {data}.",
        "Who has access to {data}?",
        "Please export {data} and then close my account.",
        "Do you share {data} with advertisers?",
        "Erase everything you have about me.",
        "Under GDPR, tell me what you store about me.",
        "I want you to forget {data}.",
    ],
}

# Phrased unlike anything in training: other words, other sentence shapes.
HELDOUT_TEMPLATES = {
    "billing": [
        "Your system took {amount} from me two times, please fix it.",
        "I'd like my money back for {order}.",
        "Receipt needed for the {plan} payment please.",
        "Got billed {amount} even though I downgraded my {plan}.",
    ],
    "login": [
        "Locked out. Reset link is not working.",
        "My authenticator app is gone with my old {device}, how do I get in?",
        "Cannot access my profile, it rejects my credentials.",
        "Sign-in fails on the {device} with 'invalid user'.",
    ],
    "shipping": [
        "Package {order} is stuck in transit for {days}.",
        "Still waiting on my {item}, no update for {days}.",
        "Need to send {order} to my office instead of home.",
        "Box arrived crushed, the {item} inside is broken.",
    ],
    "bug": [
        "Something is broken: the {page} throws an exception.",
        "On my {device} the {page} won't render at all.",
        "Tapping the {page} makes the whole app close.",
        "Since yesterday the {page} shows an empty white screen.",
    ],
    "feature": [
        "Wish list item for your product team: {wish}.",
        "You should really offer {wish}.",
        "Is {wish} on the roadmap?",
        "Requesting {wish} for the mobile app.",
    ],
    "privacy": [
        "Under data protection law I want {data} erased.",
        "Send me everything you store about me.",
        "Do you sell {data} to advertisers?",
        "Forget me: wipe {data}.",
    ],
}


def fill(template: str, rng: random.Random) -> str:
    text = template.format(**{k: rng.choice(v) for k, v in FILL.items() if "{" + k + "}" in template})
    return rng.choice(FILL["hi"]) + text + rng.choice(FILL["bye"])


def row(ticket: str, queue: str) -> dict[str, list[dict[str, str]]]:
    """TRL's conversational prompt-completion: the loss covers the queue name only, not the ticket."""
    return {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ticket}],
            "completion": [{"role": "assistant", "content": queue}]}


def sample(templates: dict[str, list[str]], per_queue: int, rng: random.Random, seen: set[str]) -> list[dict]:
    rows = []
    for queue in QUEUES:
        made = 0
        while made < per_queue:
            ticket = fill(rng.choice(templates[queue]), rng)
            if ticket in seen:
                continue
            seen.add(ticket)
            rows.append(row(ticket, queue))
            made += 1
    rng.shuffle(rows)
    return rows


def main() -> None:
    rng = random.Random(SEED)
    seen: set[str] = set()
    files = {
        "train.jsonl": sample(TRAIN_TEMPLATES, TRAIN_PER_QUEUE, rng, seen),
        "validation.jsonl": sample(TRAIN_TEMPLATES, VALIDATION_PER_QUEUE, rng, seen),
        "heldout.jsonl": sample(HELDOUT_TEMPLATES, HELDOUT_PER_QUEUE, rng, seen),
    }
    for name, rows in files.items():
        (HERE / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{name}: {len(rows)} rows")


if __name__ == "__main__":
    main()
