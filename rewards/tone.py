"""Sentence-level signals a sales manager hears but a keyword list misses: tone, evasion, rambling.

A rule list catches "hurry up" but not the thousand ways to be curt ("fine, have a look if you
must"), and VADER reads "I'll walk you through it, if that's really what you need" as positive.
So each reply sentence is embedded with MiniLM (the embedder the `similarity` module already
loads) and compared to small banks of *general* utterances written for this module, one bank per
behaviour and one for its respectful counterpart. A sentence counts as dismissive when it is
closer to the dismissive bank than to the respectful one; the margin, not a raw cosine, is the
signal, because MiniLM cosines are dominated by topic (two car sentences are always close).

The banks describe behaviours, not the expert pairs: no sentence here is copied or paraphrased from
`tasks/*/preferences*.jsonl`, so accuracy on pairs written later (the `fresh` split) is an honest
test. Features (all per reply, used by the `preference` reward model with an expert-expected sign):
- `dismissive`: the largest (dismissive - respectful) margin over the reply's sentences.
- `hype`: the share of sentences that are enthusiasm or praise with no information in them.
- `deflection`: the largest (deflecting - answering) margin: "ask someone else", "look it up".
- `chitchat`: the largest (small talk / personal anecdote - on-task) margin.
- `off_topic_share`: the share of sentences whose cosine to the customer's turn is under 0.2.
- `least_on_topic`: the lowest cosine between one sentence and the customer's turn.
- `direct_opening`: the customer asked a question and the reply opens with an answer
  (yes / no / "it does" / "we can"), not with praise.
"""

from __future__ import annotations

import re

import torch

DISMISSIVE = [
    "I don't have time for this.",
    "Make it quick, I'm busy.",
    "Look, I've explained this already.",
    "You should really know that by now.",
    "That's a silly thing to worry about.",
    "It's not that complicated, honestly.",
    "Fine, whatever you say.",
    "If you must, go ahead.",
    "I doubt you could afford it anyway.",
    "People like you never end up buying.",
    "Don't bother me unless you're serious.",
    "Do your own homework before you come in.",
    "Yeah, yeah, I've heard that one before.",
    "Can we speed this up?",
    "That's a pretty dumb question.",
    "You're overthinking it, just pick one.",
    "I guess I can help, if I really have to.",
    "Not my job to explain that to you.",
    "Sure, if that's what you want to waste time on.",
    "Honestly, you wouldn't understand the details.",
    "Why would you even ask that?",
    "Don't expect any special treatment.",
    "It is what it is, take it or leave it.",
    "Everybody says that, it means nothing.",
    "Try to keep up.",
    "Well, that's your problem, not mine.",
    "Go find someone else to bother.",
    "You again? What now?",
    "I suppose I can show you, but be quick.",
    "Let me guess, you can't make up your mind.",
    "Just don't touch anything.",
    "Sigh. Okay, here we go again.",
]
RESPECTFUL = [
    "Happy to help with that.",
    "Great question, let me explain.",
    "Take all the time you need.",
    "That makes complete sense.",
    "Thanks for asking, it's a good thing to check.",
    "I'm glad you came in today.",
    "Let's go through it together.",
    "No question is silly here.",
    "I'll make sure you have everything you need.",
    "You're welcome to look around at your own pace.",
    "I appreciate you telling me that.",
    "It's a big decision, so it's worth getting right.",
    "Of course, I'll walk you through it again.",
    "Good to see you, welcome back.",
    "I understand, that's a fair concern.",
    "Let me find out for you right away.",
    "Whatever you decide, I'm here to help.",
    "That's a smart thing to ask about.",
    "I'd be glad to show you.",
    "Let me know if anything is unclear.",
    "It's completely normal to feel that way.",
    "We can go as slowly as you like.",
    "I'll check with my manager and come straight back to you.",
    "Here is the information, take a look.",
]
HYPE = [
    "You're going to love it!",
    "It's one of our most popular models.",
    "Customers absolutely rave about it.",
    "It looks stunning in person.",
    "Honestly, it's an amazing car.",
    "You have great taste!",
    "It's such a fun car to drive.",
    "Everyone who drives it falls in love.",
    "It's a fantastic choice, trust me.",
    "Our clients are always thrilled with it.",
    "It really turns heads.",
    "It's the best car we sell, hands down.",
    "You won't regret it.",
    "It's a beautiful vehicle with lots to offer.",
    "We have a wonderful selection.",
    "Our team is the best in the business.",
]
INFORMATIVE = [
    "Yes, it comes standard on that trim.",
    "No, that option costs extra.",
    "The warranty covers the engine and gearbox for the full term.",
    "It uses a timing chain rather than a belt.",
    "The payment is due a month after signing.",
    "You'll need your license and proof of insurance.",
    "The higher trim adds heated seats and a larger screen.",
    "It depends on the lender, but usually about thirty days.",
    "The deposit is refundable until you sign the contract.",
    "Both versions share the same engine.",
    "It seats five, with a fold-flat rear bench.",
    "Delivery is included in the price.",
]
DEFLECTING = [
    "I can't really say.",
    "You'd have to ask someone else about that.",
    "Look it up online, it's all there.",
    "That's not really my department.",
    "It's hard to say, it depends on a lot of things.",
    "I wouldn't know about that.",
    "Check the brochure, it's in there somewhere.",
    "Let's not worry about that right now.",
    "That's a question for the manufacturer.",
    "I'd rather not get into that.",
    "Every situation is different, so who knows.",
    "We can talk about that some other time.",
    "You'll just have to see for yourself.",
    "I don't deal with that kind of thing.",
]
ANSWERING = [
    "Yes, it does.",
    "No, it doesn't, but there is an option for it.",
    "Here's exactly how it works.",
    "The short answer is yes.",
    "It's included as standard.",
    "That one is extra, and I can tell you what it costs.",
    "Let me give you the details.",
    "It works like this.",
    "I'll check that for you and confirm right now.",
    "You can, and here is what you need to do.",
    "That's covered for the first three years.",
    "It's optional, you can add it later.",
]
CHITCHAT = [
    "My wife and I went camping last weekend.",
    "I remember a funny story from years ago.",
    "Did you catch the game last night?",
    "My kids are starting school next month.",
    "The weather has been lovely lately.",
    "We just renovated the office break room.",
    "I used to work in a restaurant before this.",
    "Have you tried the new cafe across the road?",
    "My dog loves going for rides in the car.",
    "Fun fact: the first cars had no steering wheel.",
    "I went on a great holiday last summer.",
    "Our coffee machine makes fantastic espresso.",
    "My brother collects old motorcycles.",
    "Speaking of which, I saw a great movie recently.",
]
ON_TASK = [
    "Let's look at the cars that fit your budget.",
    "Here is what the warranty covers.",
    "I can set up a test drive for you.",
    "That model has the features you asked about.",
    "I'll get the paperwork ready.",
    "The price includes delivery and registration.",
    "What will you mostly use the car for?",
    "Let me compare the two options for you.",
    "Your trade-in will be appraised today.",
    "The financing terms are flexible.",
    "I'll check what we have on the lot.",
    "The service plan can be added at purchase.",
]
ANSWER_OPENING = re.compile(
    r"^\W*(yes|yeah|yep|no|nope|not (directly|quite|really|on)|absolutely|definitely|certainly|sure|"
    r"of course|correct|exactly|usually|mostly|mainly|generally|typically|both|neither|either|only|"
    r"(it|that|this|they|we|you|there) ?('?s|'?re|'?ll|is|are|was|does|doesn'?t|do|don'?t|can|can'?t|"
    r"will|won'?t|has|have|comes|uses|includes|covers|means|works|depends))\b",
    re.IGNORECASE,
)
OFF_TOPIC_COSINE = 0.2
TONE_FEATURES: dict[str, int] = {  # name -> the sign an expert expects (+1: more is better)
    "dismissive": -1,
    "hype": -1,
    "deflection": -1,
    "chitchat": -1,
    "off_topic_share": -1,
    "least_on_topic": +1,
    "direct_opening": +1,
}
BANKS = {
    "dismissive": (DISMISSIVE, RESPECTFUL),
    "hype": (HYPE, INFORMATIVE),
    "deflection": (DEFLECTING, ANSWERING),
    "chitchat": (CHITCHAT, ON_TASK),
}


class ToneFeatures:
    """`TONE_FEATURES` from sentence embeddings; `embed(texts) -> list[unit vectors]` is shared."""

    def __init__(self, embed) -> None:
        self.embed = embed
        self.banks = {
            name: (torch.stack(embed(bad)), torch.stack(embed(good))) for name, (bad, good) in BANKS.items()
        }

    def margins(self, sentences: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per sentence: max cosine to the behaviour's bank minus max cosine to its counterpart."""
        return {
            name: (sentences @ bad.T).max(1).values - (sentences @ good.T).max(1).values
            for name, (bad, good) in self.banks.items()
        }

    def __call__(self, customer: str, e_customer: torch.Tensor, parts: list[str]) -> dict[str, float]:
        row = dict.fromkeys(TONE_FEATURES, 0.0)
        if not parts:
            return row
        sentences = torch.stack(self.embed(parts))
        margins = self.margins(sentences)
        row["dismissive"] = max(0.0, float(margins["dismissive"].max()))
        row["hype"] = float((margins["hype"] > 0).float().mean())
        row["deflection"] = max(0.0, float(margins["deflection"].max()))
        row["chitchat"] = max(0.0, float(margins["chitchat"].max()))
        on_topic = sentences @ e_customer
        row["off_topic_share"] = float((on_topic < OFF_TOPIC_COSINE).float().mean())
        row["least_on_topic"] = float(on_topic.min())
        row["direct_opening"] = 1.0 if "?" in customer and ANSWER_OPENING.search(parts[0]) else 0.0
        return row
