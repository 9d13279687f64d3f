"""The tooluse catalogue: sixteen realistic functions (OpenAI tool definitions) and, for each, queries with
concrete values and the exact calls that answer them.

A maker draws values from a seeded random.Random and returns (query, stated, unstated): `stated` maps
each parameter the query fixes to the values accepted for it (a city alone or with its country, a
language by name or code); `unstated` gives values accepted for an optional parameter the query leaves
open (Apple's exchange is NASDAQ). Function.expect turns them into the expected call the checker reads.
It does not assemble the suite (tooluse/__init__.py) or read model output (check.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

Values = dict[str, list]  # parameter -> the values accepted for it
Made = tuple[str, Values, Values]  # (query, stated, unstated)

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
# city -> (names accepted for it, IANA time zone, IATA airport)
CITIES = {
    "Paris": (["Paris", "Paris, France"], "Europe/Paris", "CDG"),
    "Tokyo": (["Tokyo", "Tokyo, Japan"], "Asia/Tokyo", "HND"),
    "New York": (["New York", "New York City", "New York, NY", "New York, USA", "New York City, USA"],
                 "America/New_York", "JFK"),
    "London": (["London", "London, UK", "London, United Kingdom", "London, England"], "Europe/London", "LHR"),
    "Sydney": (["Sydney", "Sydney, Australia"], "Australia/Sydney", "SYD"),
    "Berlin": (["Berlin", "Berlin, Germany"], "Europe/Berlin", "BER"),
    "Toronto": (["Toronto", "Toronto, Canada"], "America/Toronto", "YYZ"),
    "Madrid": (["Madrid", "Madrid, Spain"], "Europe/Madrid", "MAD"),
    "Seoul": (["Seoul", "Seoul, South Korea"], "Asia/Seoul", "ICN"),
    "Lisbon": (["Lisbon", "Lisbon, Portugal"], "Europe/Lisbon", "LIS"),
    "Chicago": (["Chicago", "Chicago, IL", "Chicago, USA"], "America/Chicago", "ORD"),
    "Singapore": (["Singapore"], "Asia/Singapore", "SIN"),
    "Dubai": (["Dubai", "Dubai, UAE", "Dubai, United Arab Emirates"], "Asia/Dubai", "DXB"),
    "Rome": (["Rome", "Rome, Italy"], "Europe/Rome", "FCO"),
    "Mexico City": (["Mexico City", "Mexico City, Mexico"], "America/Mexico_City", "MEX"),
    "Nairobi": (["Nairobi", "Nairobi, Kenya"], "Africa/Nairobi", "NBO"),
}
CURRENCIES = {"USD": "US dollars", "EUR": "euros", "JPY": "Japanese yen", "GBP": "British pounds",
              "CHF": "Swiss francs", "CAD": "Canadian dollars", "AUD": "Australian dollars", "INR": "Indian rupees",
              "CNY": "Chinese yuan", "MXN": "Mexican pesos", "SEK": "Swedish kronor", "BRL": "Brazilian reais"}
UNITS = {"length": ("meters", "kilometers", "miles", "feet", "inches", "centimeters"),
         "mass": ("kilograms", "grams", "pounds", "ounces"), "volume": ("liters", "milliliters", "gallons")}
STOCKS = {"Apple": ("AAPL", "NASDAQ"), "Microsoft": ("MSFT", "NASDAQ"), "Tesla": ("TSLA", "NASDAQ"),
          "Amazon": ("AMZN", "NASDAQ"), "Nvidia": ("NVDA", "NASDAQ"), "Netflix": ("NFLX", "NASDAQ"),
          "Coca-Cola": ("KO", "NYSE"), "IBM": ("IBM", "NYSE"), "Walmart": ("WMT", "NYSE"), "Disney": ("DIS", "NYSE"),
          "Nike": ("NKE", "NYSE"), "Visa": ("V", "NYSE")}
LANGUAGES = {"Spanish": "es", "French": "fr", "German": "de", "Italian": "it", "Japanese": "ja", "Portuguese": "pt",
             "Korean": "ko", "Dutch": "nl", "Swedish": "sv", "Turkish": "tr"}
PHRASES = ("Where is the train station?", "Good morning, how are you?", "The meeting is moved to Friday.",
           "I would like a cup of coffee, please.", "Thank you for your help.", "How much does this cost?",
           "The museum opens at nine.", "Happy birthday to my best friend!")
EVENTS = ("Dentist appointment", "Team standup", "Lunch with Maria", "Project review", "Yoga class",
          "Call with the bank", "Piano lesson", "Quarterly planning")
CUISINES = ("Italian", "Thai", "Mexican", "Japanese", "Indian", "vegan", "Greek", "Ethiopian")
MAILS = (("alice@example.com", "Lunch tomorrow", "See you at noon by the fountain."),
         ("bob.smith@example.org", "Quarterly report", "The report is attached; comments welcome."),
         ("team@acme.io", "Server maintenance", "The servers go down at 10 pm tonight."),
         ("j.doe@example.net", "Flight details", "I land at 6 pm, terminal 2."),
         ("hr@example.com", "Vacation request", "I would like to take the first week of August off."))
LABELS = ("pasta", "laundry", "tea", "stretch break", "pizza", "call mom")
STATISTICS = {"mean": "mean", "median": "median", "mode": "mode", "standard deviation": "standard_deviation",
              "variance": "variance"}


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    description: str
    properties: dict  # JSON-schema properties of the parameters
    required: tuple[str, ...]
    make: Callable[[random.Random], Made]  # one query and its call
    many: Callable[[random.Random, int], tuple[str, list[tuple[Values, Values]]]] | None = None  # k calls, one query

    def tool(self) -> dict:
        """The OpenAI tool definition offered to the model."""
        return {"type": "function", "function": {"name": self.name, "description": self.description, "parameters": {
            "type": "object", "properties": self.properties, "required": list(self.required)}}}

    def expect(self, stated: Values, unstated: Values | None = None) -> dict:
        """The expected call: every parameter with the values accepted for it; `optional` names those that
        may be left out (when given, an unstated one must be its default or a value `unstated` allows)."""
        assert set(self.required) <= set(stated), f"{self.name}: a required parameter is not stated"
        assert set(stated) | set(unstated or {}) <= set(self.properties), f"{self.name}: unknown parameter"
        arguments, optional = {}, []
        for p, spec in self.properties.items():
            if p in stated:
                arguments[p] = list(stated[p])
                continue
            allowed = list((unstated or {}).get(p, []))
            if "default" in spec and spec["default"] not in allowed:
                allowed.append(spec["default"])
            arguments[p], optional = allowed, optional + [p]
        return {"name": self.name, "arguments": arguments, "optional": optional}


def a_date(rng: random.Random) -> tuple[str, str]:
    """(the date as a person writes it, YYYY-MM-DD)."""
    month, day = rng.randint(1, 12), rng.randint(1, 28)
    spoken = rng.choice([f"{MONTHS[month - 1]} {day}, 2025", f"{day} {MONTHS[month - 1]} 2025"])
    return spoken, f"2025-{month:02d}-{day:02d}"


def a_time(rng: random.Random) -> tuple[str, list[str]]:
    """(a time of day as a person writes it, its accepted 24-hour HH:MM forms)."""
    hour, minute = rng.randint(8, 19), rng.choice([0, 15, 30, 45])
    h12 = hour - 12 if hour > 12 else hour
    spoken = f"{h12}{'' if minute == 0 else f':{minute:02d}'} {'pm' if hour >= 12 else 'am'}"
    return spoken, sorted({f"{hour:02d}:{minute:02d}", f"{hour}:{minute:02d}"})


def listing(items: list[str]) -> str:
    """['a', 'b', 'c'] -> 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _weather(rng):
    city = rng.choice(list(CITIES))
    if rng.random() < 0.5:
        return f"What's the weather like in {city} right now?", {"location": CITIES[city][0]}, {}
    unit = rng.choice(["celsius", "fahrenheit"])
    return (f"What is the current temperature in {city}, in degrees {unit.capitalize()}?",
            {"location": CITIES[city][0], "unit": [unit]}, {})


def _weather_many(rng, k):
    cities = rng.sample(list(CITIES), k)
    return (f"What's the weather like right now in {listing(cities)}?",
            [({"location": CITIES[c][0]}, {}) for c in cities])


def _amount(rng) -> int | float:
    return rng.choice([20, 50, 75, 120, 250, 800, 1000, 3000, 19.99, 349.5, 1250.75])


def _currency(rng):
    a, b = rng.sample(list(CURRENCIES), 2)
    amount = _amount(rng)
    query = rng.choice([f"How much is {amount} {CURRENCIES[a]} in {CURRENCIES[b]}?", f"Convert {amount} {a} to {b}."])
    return query, {"amount": [amount], "from_currency": [a], "to_currency": [b]}, {}


def _currency_many(rng, k):
    a, *targets = rng.sample(list(CURRENCIES), k + 1)
    amount = _amount(rng)
    return (f"Convert {amount} {CURRENCIES[a]} into {listing([CURRENCIES[t] for t in targets])}.",
            [({"amount": [amount], "from_currency": [a], "to_currency": [t]}, {}) for t in targets])


def _units(rng):
    a, b = rng.sample(UNITS[rng.choice(list(UNITS))], 2)
    value = rng.choice([2, 5, 12, 26.2, 100, 3.5, 750])
    query = rng.choice([f"How many {b} are there in {value} {a}?", f"Convert {value} {a} to {b}."])
    return query, {"value": [value], "from_unit": [a], "to_unit": [b]}, {}


def _flights(rng):
    a, b = rng.sample(list(CITIES), 2)
    spoken, iso = a_date(rng)
    stated = {"origin": [CITIES[a][2]], "destination": [CITIES[b][2]], "date": [iso]}
    query = f"Find me flights from {a} ({CITIES[a][2]}) to {b} ({CITIES[b][2]}) on {spoken}"
    if rng.random() < 0.5:
        n = rng.randint(2, 5)
        query, stated["passengers"] = query + f" for {n} passengers", [n]
    if rng.random() < 0.4:
        query, stated["nonstop_only"] = query + ", nonstop only", [True]
    return query + ".", stated, {}


def _calendar(rng):
    title, (day, iso), (at, times) = rng.choice(EVENTS), a_date(rng), a_time(rng)
    stated = {"title": [title], "date": [iso], "start_time": times}
    query = f"Put \"{title}\" on my calendar for {day} at {at}."
    if rng.random() < 0.5:
        minutes = rng.choice([15, 30, 45, 90, 120])
        query, stated["duration_minutes"] = query + f" It takes {minutes} minutes.", [minutes]
    return query, stated, {}


def _stock(rng):
    company = rng.choice(list(STOCKS))
    symbol, exchange = STOCKS[company]
    if rng.random() < 0.6:
        return f"What is {company}'s stock price right now?", {"symbol": [symbol]}, {"exchange": [exchange]}
    return f"What is {symbol} trading at on the {exchange}?", {"symbol": [symbol], "exchange": [exchange]}, {}


def _stock_many(rng, k):
    companies = rng.sample(list(STOCKS), k)
    return (f"Get me the current share prices of {listing(companies)}.",
            [({"symbol": [STOCKS[c][0]]}, {"exchange": [STOCKS[c][1]]}) for c in companies])


def _translate(rng):
    phrase, language = rng.choice(PHRASES), rng.choice(list(LANGUAGES))
    return (f"Translate \"{phrase}\" into {language}.", {"text": [phrase], "target_language": [language,
            LANGUAGES[language]]}, {"source_language": ["English", "en"]})


def _translate_many(rng, k):
    phrase, languages = rng.choice(PHRASES), rng.sample(list(LANGUAGES), k)
    return (f"Translate \"{phrase}\" into {listing(languages)}.",
            [({"text": [phrase], "target_language": [lang, LANGUAGES[lang]]}, {"source_language": ["English", "en"]})
             for lang in languages])


def _interest(rng):
    principal, rate, years = rng.choice([1000, 2500, 5000, 10000, 20000]), rng.choice([3, 4.5, 5, 6.25, 7]), \
        rng.randint(2, 30)
    query = f"If I invest ${principal} at {rate}% annual interest for {years} years, how much will I have?"
    stated = {"principal": [principal], "annual_rate_percent": [rate], "years": [years]}
    if rng.random() < 0.5:
        word, n = rng.choice([("monthly", 12), ("quarterly", 4), ("daily", 365)])
        query, stated["compounds_per_year"] = query + f" Interest is compounded {word}.", [n]
    return query, stated, {}


def _term(coef: int, power: str, first: bool) -> str:
    sign = ("-" if coef < 0 else "") if first else (" - " if coef < 0 else " + ")
    size = "" if abs(coef) == 1 and power else str(abs(coef))
    return f"{sign}{size}{power}"


def _quadratic(rng):
    a, b, c = rng.choice([1, 2, 3, -1]), rng.choice([-7, -5, -3, -2, 1, 4, 6]), rng.choice([-8, -4, -1, 2, 3, 5, 9])
    equation = _term(a, "x^2", True) + _term(b, "x", False) + _term(c, "", False)
    return f"Solve the equation {equation} = 0.", {"a": [a], "b": [b], "c": [c]}, {}


def _statistic(rng):
    numbers = [rng.choice([1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 21, 4.5]) for _ in range(rng.randint(4, 7))]
    name = rng.choice(list(STATISTICS))
    return (f"What is the {name} of {listing([str(x) for x in numbers])}?",
            {"numbers": [numbers], "statistic": [STATISTICS[name]]}, {})


def _restaurants(rng):
    cuisine, city = rng.choice(CUISINES), rng.choice(list(CITIES))
    query, stated = f"Find {cuisine} restaurants in {city}.", {"location": CITIES[city][0], "cuisine": [cuisine]}
    if rng.random() < 0.4:
        level = rng.randint(1, 3)
        query, stated["max_price_level"] = query + f" Price level {level} at most.", [level]
    if rng.random() < 0.4:
        query, stated["open_now"] = query + " They have to be open now.", [True]
    return query, stated, {}


def _timer(rng):
    if rng.random() < 0.7:
        minutes = rng.choice([3, 5, 10, 12, 25, 45])
        query, stated = f"Set a timer for {minutes} minutes.", {"duration_seconds": [minutes * 60]}
    else:
        seconds = rng.choice([30, 45, 90])
        query, stated = f"Set a timer for {seconds} seconds.", {"duration_seconds": [seconds]}
    if rng.random() < 0.5:
        label = rng.choice(LABELS)
        query, stated["label"] = query[:-1] + f" and label it \"{label}\".", [label]
    return query, stated, {}


def _email(rng):
    to, subject, body = rng.choice(MAILS)
    return (f"Send an email to {to} with the subject \"{subject}\" saying \"{body}\"",
            {"to": [to], "subject": [subject], "body": [body]}, {})


def _time(rng):
    city = rng.choice(list(CITIES))
    return f"What time is it in {city} right now?", {"timezone": [CITIES[city][1]]}, {}


def _time_many(rng, k):
    cities = rng.sample(list(CITIES), k)
    return f"What time is it right now in {listing(cities)}?", [({"timezone": [CITIES[c][1]]}, {}) for c in cities]


def _bmi(rng):
    weight, height = rng.choice([55, 62.5, 70, 81, 95]), rng.choice([158, 165, 172, 180, 191])
    return (f"I weigh {weight} kg and I am {height} cm tall. What is my BMI?",
            {"weight_kg": [weight], "height_cm": [height]}, {})


def _hotel(rng):
    city, (day, iso), nights = rng.choice(list(CITIES)), a_date(rng), rng.randint(1, 7)
    query = f"Book a hotel in {city} from {day} for {nights} night{'s' if nights > 1 else ''}"
    stated = {"city": CITIES[city][0], "check_in": [iso], "nights": [nights]}
    if rng.random() < 0.4:
        guests = rng.choice([1, 3, 4])
        query, stated["guests"] = query + f", {guests} guest{'s' if guests > 1 else ''}", [guests]
    if rng.random() < 0.4:
        query, stated["breakfast"] = query + ", breakfast included", [True]
    return query + ".", stated, {}


def _s(description: str, **extra) -> dict:
    return {"type": "string", "description": description, **extra}


def _n(kind: str, description: str, **extra) -> dict:
    return {"type": kind, "description": description, **extra}


ISO_DATE = "Date as YYYY-MM-DD"
FUNCTIONS = (
    Function("get_current_weather", "Get the current weather in a city.",
             {"location": _s("City name, e.g. Paris"),
              "unit": _s("Temperature unit", enum=["celsius", "fahrenheit"], default="celsius")},
             ("location",), _weather, _weather_many),
    Function("convert_currency", "Convert an amount of money from one currency to another at today's rate.",
             {"amount": _n("number", "Amount of money to convert"),
              "from_currency": _s("Three-letter ISO 4217 code of the currency to convert from, e.g. USD"),
              "to_currency": _s("Three-letter ISO 4217 code of the currency to convert to, e.g. EUR")},
             ("amount", "from_currency", "to_currency"), _currency, _currency_many),
    Function("convert_units", "Convert a quantity between units of length, mass or volume.",
             {"value": _n("number", "The quantity to convert"),
              "from_unit": _s("Unit of the quantity", enum=[u for us in UNITS.values() for u in us]),
              "to_unit": _s("Unit to convert to", enum=[u for us in UNITS.values() for u in us])},
             ("value", "from_unit", "to_unit"), _units),
    Function("search_flights", "Search for flights between two airports on a given date.",
             {"origin": _s("IATA code of the departure airport, e.g. LHR"),
              "destination": _s("IATA code of the arrival airport, e.g. JFK"),
              "date": _s(f"{ISO_DATE} of departure"),
              "passengers": _n("integer", "Number of passengers", default=1),
              "nonstop_only": _n("boolean", "Only show nonstop flights", default=False)},
             ("origin", "destination", "date"), _flights),
    Function("create_calendar_event", "Add an event to the user's calendar.",
             {"title": _s("Title of the event"), "date": _s(ISO_DATE),
              "start_time": _s("Start time as HH:MM in 24-hour format"),
              "duration_minutes": _n("integer", "Length of the event in minutes", default=60)},
             ("title", "date", "start_time"), _calendar),
    Function("get_stock_price", "Get the latest price of a stock.",
             {"symbol": _s("Ticker symbol, e.g. AAPL"),
              "exchange": _s("Exchange the stock is listed on; found from the symbol when left out",
                             enum=["NASDAQ", "NYSE"])},
             ("symbol",), _stock, _stock_many),
    Function("translate_text", "Translate text into another language.",
             {"text": _s("The text to translate"), "target_language": _s("Language to translate into, e.g. Spanish"),
              "source_language": _s("Language of the text; detected when left out")},
             ("text", "target_language"), _translate, _translate_many),
    Function("calculate_compound_interest", "Compute the final balance of an investment with compound interest.",
             {"principal": _n("number", "Initial amount invested"),
              "annual_rate_percent": _n("number", "Annual interest rate in percent, e.g. 4.5 for 4.5%"),
              "years": _n("integer", "Number of years"),
              "compounds_per_year": _n("integer", "How many times a year interest is compounded", default=1)},
             ("principal", "annual_rate_percent", "years"), _interest),
    Function("solve_quadratic", "Find the real roots of a*x^2 + b*x + c = 0.",
             {"a": _n("number", "Coefficient of x^2"), "b": _n("number", "Coefficient of x"),
              "c": _n("number", "Constant term")},
             ("a", "b", "c"), _quadratic),
    Function("calculate_statistic", "Compute a summary statistic of a list of numbers.",
             {"numbers": {"type": "array", "items": {"type": "number"}, "description": "The numbers"},
              "statistic": _s("Which statistic", enum=list(STATISTICS.values()))},
             ("numbers", "statistic"), _statistic),
    Function("find_restaurants", "Find restaurants in a city.",
             {"location": _s("City name"), "cuisine": _s("Type of food, e.g. Italian"),
              "max_price_level": _n("integer", "Highest price level, 1 (cheap) to 4 (expensive)"),
              "open_now": _n("boolean", "Only restaurants open right now", default=False)},
             ("location", "cuisine"), _restaurants),
    Function("set_timer", "Start a countdown timer.",
             {"duration_seconds": _n("integer", "Length of the timer in seconds"),
              "label": _s("A name for the timer")},
             ("duration_seconds",), _timer),
    Function("send_email", "Send an email.",
             {"to": _s("Recipient's email address"), "subject": _s("Subject line"), "body": _s("Text of the email"),
              "cc": _s("Address to send a copy to")},
             ("to", "subject", "body"), _email),
    Function("get_current_time", "Get the current local time in a time zone.",
             {"timezone": _s("IANA time zone name, e.g. Europe/Paris")},
             ("timezone",), _time, _time_many),
    Function("calculate_bmi", "Compute the body mass index.",
             {"weight_kg": _n("number", "Body weight in kilograms"),
              "height_cm": _n("number", "Height in centimeters")},
             ("weight_kg", "height_cm"), _bmi),
    Function("book_hotel", "Book a hotel room.",
             {"city": _s("City name"), "check_in": _s(f"{ISO_DATE} of arrival"),
              "nights": _n("integer", "Number of nights"),
              "guests": _n("integer", "Number of guests", default=2),
              "breakfast": _n("boolean", "Include breakfast", default=False)},
             ("city", "check_in", "nights"), _hotel),
)

# Questions no function of the catalogue answers: (template, the values it is filled with).
OFF_TOPIC = (
    ("What is the capital of {}?", ("Australia", "Canada", "Kenya", "Peru", "Vietnam", "Norway")),
    ("Who painted {}?", ("the Mona Lisa", "The Starry Night", "Guernica", "The Night Watch")),
    ("Write a two-line poem about {}.", ("autumn leaves", "the sea", "a sleepy cat", "city lights")),
    ("Explain in one sentence what {} is.", ("photosynthesis", "inflation", "a black hole", "recursion")),
    ("How many legs does {} have?", ("a spider", "an ant", "a crab", "a lobster")),
    ("Who wrote {}?", ("Pride and Prejudice", "One Hundred Years of Solitude", "Hamlet", "The Odyssey")),
)
