"""Seeded generator of simple children's stories, an offline stand-in for TinyStories.

    from tinystories.synthetic import generate_stories
    stories = list(generate_stories(1000, seed=0))   # same 1000 stories on every run

    import random
    from tinystories.synthetic import synthetic_story
    print(synthetic_story(random.Random(42)))

    from tinystories.synthetic import generate_instruct_stories   # TinyStories-Instruct facts
    text, facts = next(generate_instruct_stories(1, seed=0))    # facts: {"features": [...], "summary": "..."}

Each story has a beginning, a problem and a resolution drawn from one of several
plot templates whose slots (names, animals, places, toys, feelings, weather) and
optional sentences are filled from the RNG.  Only the hero gets pronouns; other
characters are named or called "it", so he/she agreement is sound by construction.
The instruct variant (templates in synthetic_instruct.py) also varies the plot with a bad ending,
a twist, a conflict, foreshadowing and a closing moral, and reports which of these it wrote.
"""

from __future__ import annotations

import random
from typing import Iterator

# Any edit to the word lists, the templates or the order of RNG draws changes the text for a seed.
SYNTHETIC_VERSION = 1

GIRL_NAMES = ("Lily", "Mia", "Emma", "Sara", "Lucy", "Anna", "Zoe", "Ella", "Amy", "Sophie",
              "Lena", "Rosie", "Maya", "Chloe", "Grace", "Ruby", "Kate", "Nora", "Ivy", "Daisy")
BOY_NAMES = ("Tom", "Ben", "Max", "Sam", "Leo", "Jack", "Tim", "Finn", "Noah", "Jake",
             "Oliver", "Adam", "Luke", "Eli", "Owen", "Theo", "Henry", "Kevin", "Joe", "Billy")
PRONOUNS = {
    "girl": {"he": "she", "his": "her", "him": "her", "himself": "herself"},
    "boy": {"he": "he", "his": "his", "him": "him", "himself": "himself"},
}
KID_KINDS = ("little {kind}", "little {kind}", "{age}-year-old {kind}", "kind little {kind}",
             "curious little {kind}", "happy {kind}")
AGES = ("three", "four", "five", "six", "seven", "eight")
ANIMALS = ("dog", "cat", "bunny", "bird", "duck", "frog", "owl", "puppy", "kitten", "squirrel",
           "mouse", "horse", "pig", "sheep", "turtle", "fox", "bear cub", "lamb", "goat", "hedgehog")
ANIMAL_ADJECTIVES = ("friendly", "little", "fluffy", "kind", "clever", "old", "happy", "gentle")
PLACES = (("in", "the park"), ("at", "the beach"), ("in", "the garden"), ("in", "the forest"),
          ("in", "the backyard"), ("at", "the playground"), ("on", "the farm"),
          ("in", "the meadow"), ("by", "the lake"), ("on", "the hill"), ("by", "the pond"),
          ("in", "the big field"), ("at", "the zoo"), ("by", "the river"),
          ("at", "Grandma's house"))
TOYS = ("ball", "kite", "teddy bear", "doll", "toy car", "toy truck", "toy boat", "drum", "hat",
        "blanket", "train", "robot", "balloon", "scarf", "yo-yo", "spinning top", "jump rope",
        "wagon", "bucket", "shovel", "whistle", "toy plane", "marble", "stuffed bunny", "rocket")
COLORS = ("red", "blue", "green", "yellow", "orange", "purple", "pink", "little", "shiny",
          "soft", "big", "old", "new")
BAD_FEELINGS = ("sad", "worried", "upset", "unhappy", "gloomy", "frustrated")
GOOD_FEELINGS = ("happy", "proud", "glad", "excited", "cheerful", "thankful")
WEATHER = ("The sun was shining and the sky was blue.", "It was a warm and sunny day.",
           "It was a cool day with soft, white clouds.", "A gentle wind was blowing.",
           "It was a bright spring morning.", "The air was fresh after the rain.",
           "It was a crisp autumn day, and the leaves were falling.",
           "Little birds were singing in the trees.", "It was a cold day, and snow was on the ground.")
HOBBIES = ("run and jump", "sing songs", "draw pictures", "look at the clouds", "play outside",
           "dance", "build tall towers", "splash in puddles")
HIDING_SPOTS = ("under a big bush", "behind a tall tree", "in the tall grass", "under a pile of leaves",
                "next to a big rock", "under the bench", "near the old fence", "inside a hollow log")
# (how it starts, what happens, what the parent says to calm the hero)
FEARS = (
    ("One night, a big storm came to the town.", "Boom! The thunder was very loud, and the lightning lit up the sky.",
     "Thunder is just a big noise. It cannot hurt you."),
    ("One night, {name} woke up, and the room was very dark.", "{He} saw a big, dark shape in the corner.",
     "Look, it is just your coat on the chair."),
    ("One night, the wind howled outside the window.", "The trees made scary shadows on the wall.",
     "The wind is just singing to the trees."),
    ("One night, all the lights went out in the house.", "Everything was dark, and {name} could not see a thing.",
     "The lights will come back soon. I am right here."),
    ("One night, {name} heard a strange sound outside.", "Scratch, scratch! Something was at the window.",
     "It is just a little branch tapping on the glass."),
)
# (skill, how the first try fails, the tip that makes it work)
SKILLS = (
    ("ride a bike", "The bike wobbled, and {he} fell on the grass.", "Keep your eyes up and keep pedaling."),
    ("swim", "{He} splashed and splashed, but {he} began to sink.", "Kick your legs and move your arms slowly."),
    ("tie {his} shoes", "The laces got all tangled up in a big knot.", "Make two bunny ears and cross them over."),
    ("climb the big tree", "{His} foot slipped, and {he} slid back down.", "Hold on tight and go one branch at a time."),
    ("fly a kite", "The kite fell down and hit the ground.", "Run into the wind and let the string out slowly."),
    ("jump rope", "The rope got caught on {his} feet.", "Jump when the rope touches the ground."),
    ("whistle", "Only air came out, and it made no sound.", "Make your lips small and round, and blow softly."),
    ("skate", "{His} feet slid apart, and {he} fell down with a bump.", "Bend your knees and take small steps."),
    ("catch a ball", "The ball bounced off {his} hands every time.", "Watch the ball and open your hands wide."),
    ("read a big book", "The words were long and hard to say.", "Say each word slowly, one sound at a time."),
)
HURT_ANIMALS = (("bird", "wing", "fly"), ("duck", "wing", "fly"), ("owl", "wing", "fly"),
                ("puppy", "paw", "walk"), ("kitten", "paw", "walk"), ("bunny", "leg", "hop"),
                ("squirrel", "leg", "climb"), ("fox", "paw", "run"), ("hedgehog", "leg", "walk"),
                ("lamb", "leg", "run"), ("frog", "leg", "jump"))
GIFTS = (("a card with a big red heart on it", "card"), ("a picture of a rainbow", "picture"),
         ("a little cake with pink frosting", "cake"), ("a necklace made of colorful beads", "necklace"),
         ("a crown made of paper flowers", "crown"), ("a paper boat with a tiny flag", "boat"))
MISHAPS = ("A gust of wind blew the {gift} into a puddle.", "The {gift} fell off the table and got bent.",
           "{He} spilled some juice on the {gift}.", "The {gift} got squished in {his} bag.")
# (how the helper is introduced, what the helper is called afterwards)
COACHES = (("{his} {parent}", "{Parent}"), ("{his} friend {friend}", "{friend}"), ("{his} grandpa", "Grandpa"),
           ("{his} big sister", "{his} big sister"))
# (how the guest is introduced, what the guest is called afterwards)
GUESTS = (("{his} {parent}", "{Parent}"), ("{his} friend {friend}", "{friend}"),
          ("{his} grandma", "Grandma"), ("{his} grandpa", "Grandpa"))

OPENING = (
    ("Once upon a time, there was {a_kid} named {name}.",
     "Once upon a time, in a small town, there lived {a_kid} named {name}.",
     "There once was {a_kid} named {name}."),
    ("{He} loved to play with {his} {toy}.", "{He} had {a_toy} that {he} loved very much.",
     "{Name} liked to {hobby}, and {he} loved {his} {toy}."),
    ("{weather}", ""),
    ("{He} lived with {his} mom and dad in a little house.", "{He} lived in a small house with a big garden.",
     "", ""),
)
ENDING_TAIL = ("{Name} felt very {good}.", "", "")

PLOTS = {
    "lost": ((
        ("One day, {name} went to {place} with {his} {toy}.", "One day, {name} took {his} {toy} to {place}."),
        ("{He} played and played until the sun began to go down.", "{He} ran around and had lots of fun.", ""),
        ("But when it was time to go home, {his} {toy} was gone!", "Suddenly, {name} could not find {his} {toy}!"),
        ("{He} looked everywhere, but it was not there.", "{He} looked high and low, but it was nowhere to be found."),
        ("{Name} felt so {bad} that {he} started to cry.", "{Name} felt very {bad}."),
    ), (
        ("Just then, {name} saw {helper_intro}.", "Then {helper_intro} came by."),
        ("\"Why are you crying?\" asked {helper}.", "\"What is wrong?\" asked {helper}.", ""),
        "\"I lost my {toy},\" said {name}. \"Can you help me find it?\"",
        ("\"Of course I will help you!\" said {helper}.", "\"Yes, let's look together,\" said {helper}."),
        "They looked and looked.",
        ("At last, {helper} found the {toy} {spot}!", "Then {helper} saw something {spot}. It was the {toy}!"),
    ), (
        ("{Name} jumped up and down with joy.", "{Name} smiled a big smile."),
        "\"Thank you so much!\" {he} said, and {he} gave {helper} a big hug.",
        ("They played with the {toy} together until it was time to go home.", ""),
    ), (
        ("In the end, {name} learned that friends are always there to help.",
         "From that day on, {name} always kept {his} {toy} close.",
         "In the end, {name} and {helper} became the best of friends."),
        ENDING_TAIL,
    )),
    "share": ((
        ("One day, {name} and {his} friend {friend} were playing {place_at}.",
         "One day, {friend} came to play with {name} {place_at}."),
        "{friend} saw the {toy} and wanted to play with it too.",
    ), (
        ("\"Can I play with your {toy}?\" asked {friend}.", "\"Please, can I have a turn?\" asked {friend}."),
        ("\"No, it is mine!\" said {name}.", "\"No! It is my {toy}!\" shouted {name}."),
        "{friend} tried to take it, and {name} pulled it back.",
        ("They pulled and pulled until both of them fell down.", "Soon they were both angry.", ""),
        ("{friend} sat down alone and looked very sad.", "{friend} walked away with tears in both eyes."),
    ), (
        ("{His} {parent} saw what happened and came over.", "Then {his} {parent} came to see what was wrong."),
        "\"Sharing is caring,\" said {Parent}. \"If you share, you can both have fun.\"",
        "{Name} thought about it for a moment.", "\"I am sorry, {friend},\" {he} said. \"Let's take turns.\"",
        ("They took turns with the {toy}, and they laughed and played all day.",
         "They played with the {toy} together, and it was much more fun."),
    ), (
        ("In the end, {name} learned that sharing is better than playing alone.",
         "From that day on, {name} always shared {his} toys with {friend}."),
        ENDING_TAIL,
    )),
    "scared": ((
        "{fear_intro}", "{fear_event}", ("{Name} was very scared.", "{Name} felt scared and small."),
        ("{He} hid under {his} blanket.", "{He} pulled the blanket over {his} head and held {his} {toy} tight."),
    ), (
        "\"{Parent}! {Parent}!\" called {name}.",
        ("{His} {parent} came in and turned on a little lamp.", "Soon {his} {parent} came into the room."),
        "{Parent} sat on the bed and gave {him} a big hug.",
        "\"Do not be scared,\" said {Parent}. \"{fear_calm}\"",
    ), (
        ("They sang a soft song together.", "{Parent} told {him} a story about {a_animal} who was very brave.", ""),
        "{Name} felt safe and {good}.",
        ("Soon {he} closed {his} eyes and fell asleep.", "Soon {he} was fast asleep."),
    ), (
        ("The next morning, the sun was shining.", ""),
        ("In the end, {name} was not scared anymore.",
         "From that night on, {name} knew that {his} {parent} was always close by."),
    )),
    "learn": ((
        "One day, {name} wanted to learn how to {skill}.",
        ("{He} saw the big kids do it, and it looked like so much fun.", ""),
        "{Name} tried, but it was very hard.", "{fail}", ("{Name} tried again, and again it did not work.", ""),
    ), (
        "{Name} felt {bad}.", ("\"I will never be able to do it,\" {he} said.", "\"It is too hard!\" {he} cried."),
        "Then {coach_intro} came over.", "\"Do not give up,\" said {coach}. \"{tip}\"",
        ("\"Everyone falls sometimes. That is how we learn.\"", ""),
    ), (
        "{Name} took a deep breath and tried one more time.", "This time, it worked!",
        "{Name} could {skill} all by {himself}!", ("\"I did it! I did it!\" {he} shouted.", ""),
    ), (
        "{Name} felt so {good}.",
        ("In the end, {name} learned that if you keep trying, you can do hard things.",
         "From that day on, {name} never gave up when something was hard."),
    )),
    "hurt_animal": ((
        ("One day, {name} was walking {place_at}.", "One day, {name} went for a walk to {place}."),
        ("{He} heard a small, sad sound.", "Suddenly, {he} heard a soft cry coming from the bushes."),
        "{He} looked and saw a little {hurt} with a hurt {part}.", "The poor {hurt} could not {move}.",
    ), (
        ("\"Oh no! You poor thing,\" said {name}.", "\"Do not be afraid. I will help you,\" said {name} softly."),
        "{He} gently picked up the {hurt} and carried it home.",
        "{His} {parent} helped {him} wrap the {part} with a soft cloth.",
        ("They gave it some water and a warm box to sleep in.", ""),
    ), (
        "Every day, {name} took care of the {hurt}.", ("{He} gave it food and talked to it.", ""),
        "After a few days, the {hurt} could {move} again!", "{Name} took it back to {place} and let it go.",
    ), (
        ("The {hurt} looked back at {name} as if to say thank you.", ""), "{Name} felt {good}.",
        ("In the end, {name} learned that being kind to animals is a good thing to do.",
         "From that day on, the {hurt} came to visit {name} every morning."),
    )),
    "surprise": ((
        "One day, {name} remembered that it was {guest_intro}'s birthday.",
        "{He} wanted to make a special surprise.", "{He} decided to make {gift_full}.",
        ("{He} worked very hard on it all morning.", "It took a long time, but {name} did not give up."),
    ), (
        "{mishap}",
    ), (
        "{Name} hid the {gift} behind {his} back.",
        ("\"Surprise!\" {he} shouted.", "\"Happy birthday, {guest}!\" {he} said."), "{Guest} smiled a big smile.",
        "\"This is the best present ever!\" said {guest}. \"Thank you, {name}!\"",
        ("They had cake and played games all afternoon.", ""),
    ), (
        "{Name} felt warm and {good} inside.",
        ("In the end, {name} learned that the best gifts come from the heart.",
         "It was the best birthday ever."),
    )),
    "new_friend": ((
        ("One day, {name} went to {place} with {his} {parent}.", "One day, {name} was playing {place_at}."),
        "There, {he} saw a new kid sitting all alone.", "{Name} wanted to say hello, but {he} felt shy.",
    ), (
        "\"Go on, just say hello,\" said {Parent}.", "{Name} walked over slowly.",
        "\"Hi, I am {name}. What is your name?\"", "\"I am {friend},\" said the new kid with a small smile.",
        "\"Do you want to play with my {toy}?\" asked {name}.",
        ("\"Yes, please!\" said {friend}.", "\"I would love to!\" said {friend}."),
    ), (
        ("They played together until it was time to go home.", "They ran, laughed and played all afternoon."),
        ("{friend} was not alone anymore.", ""),
    ), (
        ("In the end, {name} and {friend} became best friends.",
         "In the end, {name} was glad {he} had been brave enough to say hello."),
        ENDING_TAIL,
    )),
}
PLOT_NAMES = tuple(PLOTS)


class _Slots(dict):
    """Slot values; a capitalised key ({He}, {Helper}) yields the capitalised value."""

    def __missing__(self, key: str) -> str:
        low = key[:1].lower() + key[1:]
        if low == key or low not in self:
            raise KeyError(key)
        value = self[low]
        return value[:1].upper() + value[1:]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _slots(rng: random.Random, plot: str, gender: str, name: str) -> _Slots:
    friend = rng.choice(GIRL_NAMES + BOY_NAMES)
    while friend == name:
        friend = rng.choice(GIRL_NAMES + BOY_NAMES)
    prep, place = rng.choice(PLACES)
    animal = rng.choice(ANIMALS)
    kid = rng.choice(KID_KINDS).format(kind=gender, age=rng.choice(AGES))
    toy = rng.choice(COLORS) + " " + rng.choice(TOYS)
    s = _Slots(PRONOUNS[gender], name=name, friend=friend, place=place, place_at=prep + " " + place,
               a_kid=_article(kid), toy=toy, a_toy=_article(toy), weather=rng.choice(WEATHER),
               hobby=rng.choice(HOBBIES), bad=rng.choice(BAD_FEELINGS), good=rng.choice(GOOD_FEELINGS),
               parent=rng.choice(("mom", "dad")), a_animal=_article(rng.choice(ANIMAL_ADJECTIVES) + " " + animal))
    if plot == "lost":
        use_animal = rng.random() < 0.5
        s["helper_intro"] = s["a_animal"] if use_animal else "{his} friend {friend}"
        s["helper"] = "the " + animal if use_animal else friend
        s["spot"] = rng.choice(HIDING_SPOTS)
    elif plot == "scared":
        s["fear_intro"], s["fear_event"], s["fear_calm"] = rng.choice(FEARS)
    elif plot == "learn":
        s["skill"], s["fail"], s["tip"] = rng.choice(SKILLS)
        s["coach_intro"], s["coach"] = rng.choice(COACHES)
    elif plot == "hurt_animal":
        s["hurt"], s["part"], s["move"] = rng.choice(HURT_ANIMALS)
    elif plot == "surprise":
        s["guest_intro"], s["guest"] = rng.choice(GUESTS)
        s["gift_full"], s["gift"] = rng.choice(GIFTS)
        s["mishap"] = "" if rng.random() < 0.5 else (
            "But then, something bad happened. " + rng.choice(MISHAPS) + " \"Oh no!\" cried {name}. "
            "Then {he} had an idea, and {he} fixed it as well as {he} could.")
    for key, value in list(s.items()):  # slot values may themselves hold slots; one level is enough
        if "{" in value:
            s[key] = value.format_map(s)
    return s


def _paragraphs(rng: random.Random, plot: str, slots: _Slots) -> list[str]:
    return _render(rng, (OPENING,) + PLOTS[plot], slots)


def _render(rng: random.Random, paras, slots: _Slots) -> list[str]:
    """Paragraph templates to text: a tuple item is a choice of alternatives, "" is left out."""
    out = []
    for para in paras:
        picked = (rng.choice(item) if isinstance(item, tuple) else item for item in para)
        text = " ".join(p for p in picked if p).format_map(slots)
        if text:
            out.append(text)
    # Merge some neighbours so the paragraph count varies (2-5) as in TinyStories.
    merged = [out[0]]
    for i, text in enumerate(out[1:], 2):
        if rng.random() < 0.3 and not (len(merged) == 1 and i == len(out)):
            merged[-1] += " " + text
        else:
            merged.append(text)
    return merged


def tagged_story(rng: random.Random) -> tuple[str, str, str]:
    """One story as (plot name, hero gender "girl"/"boy", text); consumes the RNG like synthetic_story."""
    plot = rng.choice(PLOT_NAMES)
    gender = rng.choice(("girl", "boy"))
    name = rng.choice(GIRL_NAMES if gender == "girl" else BOY_NAMES)
    slots = _slots(rng, plot, gender, name)
    return plot, gender, "\n".join(_paragraphs(rng, plot, slots))


def synthetic_story(rng: random.Random) -> str:
    """One story drawn from rng."""
    return tagged_story(rng)[2]


def generate_stories(n: int, seed: int = 0) -> Iterator[str]:
    """n stories from a private Random(seed); story k does not depend on n."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    return (synthetic_story(rng) for _ in range(n))


def instruct_story(rng: random.Random) -> tuple[str, dict]:
    """One synthetic story and facts true of it: {"features": [...], "summary": "..."}."""
    from tinystories.synthetic_instruct import instruct_story as story

    return story(rng)


def generate_instruct_stories(n: int, seed: int = 0) -> Iterator[tuple[str, dict]]:
    """n (story, facts) pairs from a private Random(seed); pair k does not depend on n."""
    from tinystories.synthetic_instruct import generate_instruct_stories as stories

    return stories(n, seed)
