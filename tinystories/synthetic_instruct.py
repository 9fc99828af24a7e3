"""Synthetic stories with facts true of them, for TinyStories-Instruct headers.

    from tinystories.synthetic import generate_instruct_stories   # re-exported there
    for text, facts in generate_instruct_stories(3, seed=0):
        print(facts["features"], facts["summary"])

A story is the plain generator's opening and plot (same slots and, where the plot is unchanged, the same
templates) with some of these variations drawn per story and reported only when written:

    BadEnding      the problem is not solved; a sad resolution replaces the happy one
    MoralValue     a closing "... learned that ..." / "The moral of the story is ..." sentence
                   (stories without it carry no such sentence)
    Twist          an unexpected turn: the lost toy was in the bag, the scary noise was a kitten, ...
    Conflict       the hero argues or fights with another character
    Foreshadowing  an early hint (a warning, dark clouds, a cup of juice by the gift) that the story pays off

Each feature is reported because a builder wrote a sentence for it (`_Draft.key`), so the facts cannot
claim what the text lacks. Dialogue is left to the header code, which reads it from the quotes.
Other characters still get no pronouns, so the hero's he/she agreement stays sound.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterator

from tinystories.synthetic import (BOY_NAMES, ENDING_TAIL, FEARS, GIRL_NAMES, MISHAPS, OPENING, PLOT_NAMES, PLOTS,
                                   _render, _slots, _Slots)

# Any edit to these templates or the order of their random draws changes the instruct text for a seed.
INSTRUCT_VERSION = 1
FEATURES = ("BadEnding", "MoralValue", "Twist", "Foreshadowing", "Conflict")  # in the paper's order
# Chance of each where it applies: a twist only without a bad ending, a conflict or foreshadowing only in
# plots that have one (the "share" plot always has its tug of war).
RATES = {"BadEnding": 0.35, "MoralValue": 0.45, "Twist": 0.5, "Conflict": 0.45, "Foreshadowing": 0.45}

MORALS = {
    "lost": {"happy": ("{Name} learned that friends are always there to help.",
                       "The moral of the story is: take good care of the things you love."),
             "sad": ("{Name} learned that it is important to keep your things close.",
                     "The moral of the story is: take good care of the things you love."),
             "conflict": ("{Name} learned never to blame a friend without knowing what happened.",)},
    "share": {"happy": ("{Name} learned that sharing is better than playing alone.",
                        "The moral of the story is: sharing is caring."),
              "sad": ("{Name} learned, too late, that sharing is better than playing alone.",
                      "The moral of the story is: if you do not share, you may end up alone.")},
    "scared": {"happy": ("{Name} learned that when you are scared, it helps to call someone who loves you.",
                         "The moral of the story is: things in the night are often not as scary as they seem."),
               "sad": ("{Name} learned that it is better to ask for help than to be scared alone.",
                       "The moral of the story is: when you are scared, do not hide. Ask someone who loves you.")},
    "learn": {"happy": ("{Name} learned that if you keep trying, you can do hard things.",
                        "The moral of the story is: never give up, even when something is hard."),
              "sad": ("{Name} learned, too late, that you can only do hard things if you keep trying.",
                      "The moral of the story is: if you give up, you will never know what you can do.")},
    "hurt_animal": {"happy": ("{Name} learned that being kind to animals is a good thing to do.",
                              "The moral of the story is: always help those who are hurt."),
                    "sad": ("{Name} learned that being kind is always right, even when things do not end well.",
                            "The moral of the story is: be kind to animals, even when it ends sadly.")},
    "surprise": {"happy": ("{Name} learned that the best gifts come from the heart.",
                           "The moral of the story is: a gift made with love is the best gift of all."),
                 "sad": ("{Name} learned that you have to be careful with the things you make for others.",
                         "The moral of the story is: take good care of the things you make."),
                 "sad+conflict": ("The moral of the story is: fighting only breaks things.",
                                  "{Name} learned that fighting can ruin the things you love.")},
    "new_friend": {"happy": ("{Name} learned that a simple hello can make a new friend.",
                             "The moral of the story is: be brave and kind, and you will make new friends."),
                   "sad": ("{Name} learned that being shy can make you miss a new friend.",
                           "The moral of the story is: do not let being shy stop you from saying hello.")},
}

# Lost plot: toys that fit in a bag (for the "it was in the bag all along" twist), and animals that take toys.
BAG_UNFIT = ("kite", "wagon", "balloon", "blanket", "rocket", "toy plane")
THIEVES = ("puppy", "raccoon", "squirrel", "kitten")
# Scared plot, by FEARS index: what scares the hero (summary), a foreshadowing intro that replaces the
# plain one, and a twist as (lead-in, the unexpected thing, what happens next, summary).
FEAR_WHAT = ("a loud storm", "a dark shape in {his} room", "the howling wind and the shadows on the wall",
             "the dark when all the lights go out", "a strange scratching at the window")
FEAR_FORESHADOW = (
    "One evening, {name} saw big, dark clouds far away in the sky. That night, a big storm came to the town.",
    "At bedtime, {name} threw {his} coat on the chair in the corner. In the night, {he} woke up, and the room was "
    "very dark.",
    "One evening, the wind began to blow, and the tall trees swayed. That night, the wind howled outside the window.",
    "One evening, the lights in the house blinked on and off. That night, all the lights went out in the house.",
    "One evening, {name} saw a long branch swaying next to {his} window. That night, {he} heard a strange sound "
    "outside.",
)
FEAR_TWISTS = (
    ("Just then, they heard a tiny bark at the front door, and {Parent} opened it.",
     "It was the puppy from next door, and it was scared of the storm too!",
     "{Name} hugged the wet puppy and said, \"Do not be scared. It is just a big noise.\"",
     "a scared puppy from next door turns up at the door, and {name} comforts it."),
    ("{Parent} turned on the light, and they both laughed.",
     "The dark shape was not a monster at all. It was the family cat, sitting on the chair!",
     "The cat jumped onto the bed and curled up next to {name}.", "the dark shape turns out to be the family cat."),
    ("{Parent} looked out of the window and laughed.",
     "The scary shadow was not a tree at all. It was a big, fluffy owl on the window sill!",
     "The owl blinked its big eyes and flew away into the night.",
     "the scary shadow turns out to be an owl on the window sill."),
    ("Then {name} looked up and gasped.", "Little stars were shining all over the ceiling!",
     "\"They are glow-in-the-dark stars. They only shine when it is dark,\" said {Parent}.",
     "in the dark {name} finds glowing stars on the ceiling."),
    ("{Parent} opened the curtain and smiled.",
     "It was not a monster at all. It was a little lost kitten, and it wanted to come in out of the cold!",
     "They let the kitten in, and it curled up at the end of the bed.",
     "the strange sound turns out to be a lost kitten at the window."),
)
TWIST_PETS = ("puppy", "kitten", "bunny", "lamb")  # hurt animals that can turn out to be a neighbour's pet
# Surprise plot, by MISHAPS index: the hint that sets up the accident.
MISHAP_FORESHADOW = ("{He} left the {gift} by the open window, and outside the wind was starting to blow.",
                     "{He} put the {gift} right at the edge of the table.",
                     "{He} put {his} cup of juice right next to the {gift}.",
                     "{He} put the {gift} in {his} bag, but the bag was very full.")


@dataclass
class _Draft:
    rng: random.Random
    s: _Slots
    bad: bool
    twist: bool
    conflict: bool
    foreshadow: bool  # wished for; a builder that cannot write it honestly leaves it out
    evidence: dict = field(default_factory=dict)

    def key(self, feature: str, template: str) -> str:
        """The sentence(s) that make `feature` true, formatted now so they can be found verbatim in the text."""
        text = template.format_map(self.s)
        self.evidence.setdefault(feature, []).append(text)
        return text


@dataclass
class InstructStory:
    plot: str
    gender: str
    text: str
    features: list
    summary: str
    evidence: dict  # feature -> sentences of the text that carry it


def _lost(d: _Draft):
    s, rng = d.s, d.rng
    setup, problem, resolution, _ = PLOTS["lost"]
    setup = list(setup)
    if d.foreshadow:
        setup.insert(1, d.key("Foreshadowing",
                              "{His} {parent} had told {him}, \"Hold on to your {toy}, so you do not lose it.\""))
    if d.conflict:  # only when the helper is the friend
        head = [d.key("Conflict", "\"Did you take my {toy}?\" {name} asked angrily."),
                "\"No, I did not!\" said {friend}. \"I would never do that!\"",
                "They argued for a while. Then {name} said, \"I am sorry. Can you help me find it?\""]
        s1 = "{Name}, {a_kid}, loses {his} {toy} {place_at} and blames {his} friend {friend}" + (
            " for taking it." if d.bad else ", who did not take it.")  # unfound, the friend's word is all we have
        who = "{Helper}"
    else:
        head = [problem[1], problem[2]]
        s1 = "{Name}, {a_kid}, loses {his} {toy} {place_at}."
        who = "{Helper_intro}"
    problem = [problem[0]] + head + [problem[3], problem[4]]  # ... "They looked and looked."
    resolution = list(resolution)
    ending = [("From that day on, {name} always kept {his} {toy} close.",
               "In the end, {name} and {helper} became the best of friends."), ENDING_TAIL]
    if d.bad:
        problem.append(d.key("BadEnding", "They looked until it was dark, but the {toy} was nowhere to be found."))
        resolution = ["{Name} had to go home without {his} {toy}.", d.key("BadEnding", "{He} never saw it again.")]
        ending = ["{Name} was {bad} for a long, long time."]
        s2 = who + " helps {him} look, but they never find it, and {name} goes home without it."
    elif d.twist and s["toy"].split(" ", 1)[1] not in BAG_UNFIT and rng.random() < 0.5:
        problem += ["Then {name} opened {his} bag to get a snack.",
                    d.key("Twist", "The {toy} was inside! It had been there all along.")]
        s2 = who + " helps {him} look, and in the end the {toy} turns out to be in {his} own bag."
    elif d.twist:
        s["thief"] = rng.choice([a for a in THIEVES if s["helper"] != "the " + a])
        problem += ["Then they heard a funny sound {spot}.",
                    d.key("Twist", "A little {thief} was there, playing with the {toy}!"),
                    "The {thief} had taken it all along."]
        resolution.insert(0, "The {thief} dropped the {toy} and ran away.")
        s2 = who + " helps {him} look, and they find a little {thief} playing with it."
    else:
        problem.append(PLOTS["lost"][1][5])
        s2 = who + " helps {him} look, and they find it {spot}."
    return (setup, problem, resolution, ending), (s1, s2)


def _share(d: _Draft):
    setup, problem, resolution, _ = PLOTS["share"]
    problem = list(problem)
    problem[2] = d.key("Conflict", problem[2])  # the tug of war
    ending = [("From that day on, {name} always shared {his} toys with {friend}.",
               "From that day on, {name} and {friend} played together every day."), ENDING_TAIL]
    s1 = "{Name}, {a_kid}, does not want to share {his} {toy} with {his} friend {friend}, and they fight over it."
    if d.bad:
        resolution = ["{Name} did not say sorry.",
                      d.key("BadEnding", "{friend} went home, and {name} played with the {toy} all alone.")]
        ending = ["But playing alone was no fun at all, and {name} felt {bad}."]
        s2 = "{Name} does not say sorry, so {friend} goes home and {name} is left to play alone."
    elif d.twist:
        resolution = list(resolution[:4]) + [
            "Just then, {friend}'s dad came over with a big box.",
            d.key("Twist", "Inside was {a_toy}, just like {name}'s!"),
            "It was a present for {friend}.", "Now they each had {a_toy}, and they played together all day."]
        s2 = ("{His} {parent} reminds {him} that sharing is caring, {name} says sorry, and then {friend} gets "
              "{a_toy} too.")
    else:
        s2 = "{His} {parent} reminds {him} that sharing is caring, so {name} says sorry and they take turns."
    return (setup, problem, resolution, ending), (s1, s2)


def _scared(d: _Draft):
    s = d.s
    fear = [calm for _, _, calm in FEARS].index(s["fear_calm"])
    setup, problem, resolution, _ = PLOTS["scared"]
    setup = list(setup)
    if d.foreshadow and not d.twist:  # the hint pays off in the plain story, not when a twist changes the cause
        setup[0] = d.key("Foreshadowing", FEAR_FORESHADOW[fear])
    ending = [("The next morning, the sun was shining.", ""),
              ("In the end, {name} was not scared anymore.",
               "From that night on, {name} knew that {his} {parent} was always close by.")]
    s1 = "One night, {name}, {a_kid}, is scared by " + FEAR_WHAT[fear] + "."
    if d.bad:
        problem = ["{Name} wanted to call for {his} {parent}, but {he} was too scared to make a sound.",
                   "{He} stayed under the blanket, shaking, all night long."]
        resolution = [d.key("BadEnding", "{Name} did not sleep at all that night."),
                      "{His} {parent} never knew how scared {he} had been."]
        ending = ["The next morning, {name} was tired and {bad}, and {he} was still afraid of the night."]
        s2 = "{He} is too scared to call for {his} {parent}, so {he} stays awake and afraid all night."
    elif d.twist:
        lead, surprise, after, summary = FEAR_TWISTS[fear]
        calm = [problem[3]] if fear == 0 else []  # the storm is real, so the calming words still hold
        problem = [problem[0], "Soon {his} {parent} came into the room.", problem[2]] + calm + [
            lead, d.key("Twist", surprise)]
        resolution = [after] + list(resolution[1:])
        s2 = "{His} {parent} comes, and " + summary
    else:
        s2 = "{His} {parent} comes to comfort {him}, and {he} falls asleep feeling safe."
    return (setup, problem, resolution, ending), (s1, s2)


def _learn(d: _Draft):
    setup, problem, resolution, _ = PLOTS["learn"]
    setup = list(setup)
    s1 = "{Name}, {a_kid}, wants to learn to {skill}, but it is very hard"
    if d.conflict:
        setup += [d.key("Conflict", "A big kid laughed and said, \"You will never do it!\""),
                  "\"Yes, I will!\" shouted {name}, and they argued until the big kid walked away."]
        s1 += ", and a big kid laughs at {him}"
    ending = ["{Name} felt so {good}.",
              ("From that day on, {name} wanted to {skill} every day.", "{He} could not wait to show everyone.")]
    if d.bad:
        problem = list(problem[:4]) + ["But {name} shook {his} head. \"No, I do not want to try again,\" {he} said."]
        resolution = [d.key("BadEnding", "{Name} gave up, and {he} never tried to {skill} again.")]
        ending = ["Every time {he} saw the big kids, {name} felt {bad}."]
        s2 = "{Coach_intro} tells {him} not to give up, but {name} gives up anyway."
    else:
        s2 = "With help from {coach_intro}, {he} keeps trying, and at last {he} can do it."
    return (setup, problem, resolution, ending), (s1 + ".", s2)


def _hurt_animal(d: _Draft):
    setup, problem, resolution, _ = PLOTS["hurt_animal"]
    setup, problem = list(setup), list(problem)
    problem[3] = problem[3][0]  # always the box: the bad ending finds it empty
    s1 = "{Name}, {a_kid}, finds a little {hurt} with a hurt {part} {place_at} and takes it home to care for it."
    if d.conflict:
        setup[0] = "One day, {name} and {his} friend {friend} were walking {place_at}."
        problem[0:1] = [d.key("Conflict", "\"Leave it,\" said {friend}. \"It is not our job to help it.\""),
                        "\"No!\" said {name}. \"It is hurt, and it needs help!\"",
                        "They argued, but {name} would not leave the poor {hurt} behind."]
        s1 = ("{Name}, {a_kid}, finds a little {hurt} with a hurt {part} {place_at} and, even though {his} friend "
              "{friend} says to leave it, takes it home to care for it.")
    ending = [("The {hurt} looked back at {name} as if to say thank you.", ""), "{Name} felt {good}.",
              "From that day on, the {hurt} came to visit {name} every morning."]
    if d.bad:
        resolution = ["Every day, {name} took care of the {hurt}.",
                      d.key("BadEnding", "But one morning, the box was empty."),
                      "The {hurt} had gone away before its {part} was better."]
        ending = ["{Name} never saw the {hurt} again, and {he} felt {bad} for a long time."]
        s2 = "But one morning the {hurt} is gone before it is better, and {name} never sees it again."
    elif d.twist:
        resolution = list(resolution[:3]) + [
            "Then {name} saw a picture of the {hurt} on a sign by the road.",
            d.key("Twist", "The {hurt} was not a wild animal at all. It was the lost pet of the family next door!"),
            "{Name} took it back to them, and they were very happy."]
        ending = ["{Name} felt {good}.", "From that day on, {name} visited the {hurt} next door every morning."]
        s2 = "When it can {move} again, {name} finds out that it is the lost pet of the family next door."
    else:
        s2 = "When the {hurt} can {move} again, {name} lets it go."
    return (setup, problem, resolution, ending), (s1, s2)


def _surprise(d: _Draft):
    rng = d.rng
    setup, _, resolution, _ = PLOTS["surprise"]
    setup = list(setup)
    if d.twist:
        setup[0] = "One day, {name} thought that it was {guest_intro}'s birthday."
        s1 = "{Name}, {a_kid}, makes {gift_full} as a surprise for what {he} thinks is {guest_intro}'s birthday."
    else:
        s1 = "{Name}, {a_kid}, makes {gift_full} as a surprise for {guest_intro}'s birthday."
    problem, prefix = [], ""
    if d.conflict:
        problem = [d.key("Conflict", "Then {his} little brother ran in and grabbed the {gift}."),
                   "\"Let me see it!\" shouted {his} little brother.", "\"No! It is for {guest}!\" said {name}.",
                   "They pulled and pulled, and the {gift} got all messed up."]
        if d.bad:
            problem.append(d.key("BadEnding", "The {gift} was ruined, and it could not be fixed."))
            s2 = "But {his} little brother grabs it, they fight over it, and it is ruined, so {name} has no present."
        else:
            problem.append("At last, {his} little brother said sorry, and they fixed it together.")
            prefix = "{His} little brother grabs it and they fight over it, but they fix it together, and "
    elif d.bad or rng.random() < 0.5:
        mishap = rng.randrange(len(MISHAPS))
        if d.foreshadow:
            setup.append(d.key("Foreshadowing", MISHAP_FORESHADOW[mishap]))
        problem = ["But then, something bad happened.", MISHAPS[mishap], "\"Oh no!\" cried {name}."]
        if d.bad:
            problem.append(d.key("BadEnding", "{He} tried to fix it, but the {gift} was ruined."))
            s2 = "But an accident ruins the {gift}, so {name} has no present to give."
        else:
            problem.append("Then {he} had an idea, and {he} fixed it as well as {he} could.")
            prefix = "After a little accident, {name} fixes it as well as {he} can, and "
    ending = ["{Name} felt warm and {good} inside.", "It was the best birthday ever."]
    if d.bad:
        resolution = [d.key("BadEnding", "Now {name} had no present for {guest}."),
                      "{He} sat alone in {his} room and cried."]
        ending = ["{Name} felt {bad} all day long."]
    elif d.twist:
        resolution = [resolution[0], "\"Surprise! Happy birthday, {guest}!\" {he} shouted.",
                      "{Guest} laughed and said, \"Oh, {name}, my birthday is tomorrow!\"",
                      d.key("Twist", "{Name} had the wrong day!"),
                      "But {guest} loved the {gift} anyway, and they both laughed and laughed."]
        ending = ["{Name} felt warm and {good} inside.", "The next day, they had a big birthday party together."]
        s2 = (prefix + ("{guest}" if prefix else "{Guest}")
              + " loves it, even though the birthday is really the next day.")
    else:
        s2 = prefix + ("{guest}" if prefix else "{Guest}") + " loves it."
    return (setup, problem, resolution, ending), (s1, s2)


def _new_friend(d: _Draft):
    setup, problem, resolution, ending = PLOTS["new_friend"]
    setup = list(setup)
    if d.foreshadow and not d.bad:  # the hint comes true only when they do make friends
        setup[0:1] = ["One day, {name} went to {place} with {his} {parent}.",
                      d.key("Foreshadowing", "On the way, {Parent} said, \"Maybe you will make a new friend today.\"")]
    s1 = "{Name}, {a_kid}, sees a new kid sitting all alone {place_at} but feels shy."
    ending = [ending[0], ENDING_TAIL]
    if d.bad:
        problem = [problem[0], "{Name} wanted to go, but {his} feet would not move.", "{He} was just too shy."]
        resolution = [d.key("BadEnding", "Soon the new kid went home, and {name} never even found out the kid's name.")]
        ending = ["{Name} went home feeling {bad} and lonely."]
        s2 = "{Name} is too shy to say hello, and the new kid goes home."
    elif d.twist:
        resolution = ["They ran, laughed and played all afternoon.",
                      "When it was time to go home, {friend} walked the same way as {name}.",
                      "Then {friend} stopped at the house right next to {name}'s.",
                      d.key("Twist", "{friend} had just moved in next door!")]
        ending = ["Now {name} had a new best friend right next door."]
        s2 = "{Name} says hello anyway, {he} and {friend} become friends, and {friend} turns out to live next door."
    else:
        s2 = "{Name} says hello anyway, and {he} and {friend} become friends."
    return (setup, problem, resolution, ending), (s1, s2)


BUILDERS = {"lost": _lost, "share": _share, "scared": _scared, "learn": _learn, "hurt_animal": _hurt_animal,
            "surprise": _surprise, "new_friend": _new_friend}


def _can_twist(plot: str, s: _Slots) -> bool:
    return plot != "learn" and (plot != "hurt_animal" or s["hurt"] in TWIST_PETS)


def _can_conflict(plot: str, s: _Slots) -> bool:
    return plot in ("learn", "hurt_animal", "surprise") or (plot == "lost" and s["helper"] == s["friend"])


def _morals(plot: str, bad: bool, conflict: bool) -> tuple:
    morals, outcome = MORALS[plot], "sad" if bad else "happy"
    if conflict:
        return morals.get(outcome + "+conflict", morals.get("conflict", morals[outcome]))
    return morals[outcome]


def draft_story(rng: random.Random) -> InstructStory:
    """One instruct story with its plot, hero gender and the sentences behind each feature (for tests)."""
    plot = rng.choice(PLOT_NAMES)
    gender = rng.choice(("girl", "boy"))
    name = rng.choice(GIRL_NAMES if gender == "girl" else BOY_NAMES)
    s = _slots(rng, plot, gender, name)
    bad = rng.random() < RATES["BadEnding"]
    twist = not bad and _can_twist(plot, s) and rng.random() < RATES["Twist"]
    conflict = plot == "share" or (_can_conflict(plot, s) and rng.random() < RATES["Conflict"])
    d = _Draft(rng, s, bad, twist, conflict, rng.random() < RATES["Foreshadowing"])
    (setup, problem, resolution, ending), summary = BUILDERS[plot](d)
    if rng.random() < RATES["MoralValue"]:
        ending = list(ending) + [d.key("MoralValue", rng.choice(_morals(plot, bad, conflict)))]
    text = "\n".join(_render(rng, (OPENING, setup, problem, resolution, ending), s))
    features = [f for f in FEATURES if f in d.evidence]
    return InstructStory(plot, gender, text, features, " ".join(t.format_map(s) for t in summary), d.evidence)


def instruct_story(rng: random.Random) -> tuple[str, dict]:
    """One synthetic story and facts true of it: {"features": [...], "summary": "..."}."""
    story = draft_story(rng)
    return story.text, {"features": story.features, "summary": story.summary}


def generate_instruct_stories(n: int, seed: int = 0) -> Iterator[tuple[str, dict]]:
    """n (story, facts) pairs from a private Random(seed); pair k does not depend on n."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    return (instruct_story(rng) for _ in range(n))
