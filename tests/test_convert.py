"""Raw-dump converters (recbole_llm/data/convert.py): Amazon 2014/2018 and Yelp -> RecBole atomic files."""

import gzip
import json
import os

import pytest

from recbole_llm.data.convert import format_categories, main

INTER_HEADER = "user_id:token\titem_id:token\ttimestamp:float"
ITEM_HEADER = "item_id:token\ttitle:token\tbrand:token\tcategories:token_seq"


def write_lines(path, lines, gz=False):
    text = "".join(line + "\n" for line in lines)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return str(path)


def read_atomic(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[-1] == ""  # ends with a newline
    return lines[0], [line.split("\t") for line in lines[1:-1]]


def amazon_review(user, item, t):
    return json.dumps({"reviewerID": user, "asin": item, "unixReviewTime": t, "overall": 5.0, "reviewText": "ok"})


# A: three reviews out of order, two at the same time (input order kept); B: two reviews; C: one
AMAZON_REVIEWS = [
    amazon_review("A", "i2", 300),
    amazon_review("B", "i1", 50),
    amazon_review("A", "i1", 100),
    amazon_review("A", "i3", 300),
    amazon_review("B", "i3", 20),
    amazon_review("C", "i9", 10),
]

# 2014 metadata: python-literal dicts, categories as a list of lists
AMAZON_2014_META = [
    repr({"asin": "i1", "title": "<b>Nice</b> cream &amp; more\tnow\n", "brand": "Acme  Co",
          "categories": [["Beauty", "Skin Care", "Face"], ["Beauty", "Skin Care"]]}),
    repr({"asin": "i2", "title": "Lip balm", "categories": [["Beauty"]], "salesRank": {"Beauty": 3}}),
    json.dumps({"asin": "i3", "title": "Soap", "brand": "Suds", "categories": [["Health & Personal Care"]]}),
    repr({"asin": "i8", "title": "never reviewed", "categories": [["X"]]}),
]


def run_ok(args, capsys):
    rc = main(args)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return captured.out


def test_amazon_2014_plain(tmp_path, capsys):
    reviews = write_lines(tmp_path / "reviews_Beauty.json", AMAZON_REVIEWS)
    meta = write_lines(tmp_path / "meta_Beauty.json", AMAZON_2014_META)
    out = str(tmp_path / "out")
    printed = run_ok(["amazon", f"--reviews={reviews}", f"--meta={meta}", "--name=az14", f"--out={out}"], capsys)

    header, rows = read_atomic(os.path.join(out, "az14", "az14.inter"))
    assert header == INTER_HEADER
    assert rows == [
        ["A", "i1", "0"], ["A", "i2", "1"], ["A", "i3", "2"],  # chronological; the 300-tie keeps input order
        ["B", "i3", "0"], ["B", "i1", "1"],
        ["C", "i9", "0"],
    ]
    header, items = read_atomic(os.path.join(out, "az14", "az14.item"))
    assert header == ITEM_HEADER  # no description in this metadata
    by_id = {row[0]: row for row in items}
    assert set(by_id) == {"i1", "i2", "i3", "i9"}  # only items of the .inter file (not i8)
    assert by_id["i1"] == ["i1", "Nice cream & more now", "Acme Co", "Beauty Skin_Care Face"]
    assert by_id["i2"] == ["i2", "Lip balm", "", "Beauty"]
    assert by_id["i3"] == ["i3", "Soap", "Suds", "Health_&_Personal_Care"]
    assert by_id["i9"] == ["i9", "", "", ""]  # no metadata: unknown
    assert "3 users, 4 items, 6 interactions" in printed
    assert os.path.join(out, "az14", "az14.inter") in printed and os.path.join(out, "az14", "az14.item") in printed
    assert sorted(os.listdir(os.path.join(out, "az14"))) == ["az14.inter", "az14.item"]  # no temp files left


def test_amazon_2014_gz_keep_time(tmp_path, capsys):
    reviews = write_lines(tmp_path / "reviews_Beauty.json.gz", AMAZON_REVIEWS, gz=True)
    meta = write_lines(tmp_path / "meta_Beauty.json.gz", AMAZON_2014_META, gz=True)
    out = str(tmp_path / "out")
    run_ok(["amazon", f"--reviews={reviews}", f"--meta={meta}", "--name=az14gz", f"--out={out}", "--keep_time"], capsys)
    _, rows = read_atomic(os.path.join(out, "az14gz", "az14gz.inter"))
    assert rows == [
        ["A", "i1", "100"], ["A", "i2", "300"], ["A", "i3", "300"],
        ["B", "i3", "20"], ["B", "i1", "50"],
        ["C", "i9", "10"],
    ]
    _, items = read_atomic(os.path.join(out, "az14gz", "az14gz.item"))
    assert {row[0]: row for row in items}["i1"][3] == "Beauty Skin_Care Face"


def test_amazon_2018_description_and_kcore(tmp_path, capsys):
    reviews = write_lines(tmp_path / "Industrial.json", [
        amazon_review("u1", "p1", 1), amazon_review("u1", "p2", 2), amazon_review("u1", "p3", 3),
        amazon_review("u2", "p2", 5), amazon_review("u2", "p1", 4),
        amazon_review("u3", "p3", 1),
    ])
    meta = write_lines(tmp_path / "meta_Industrial.json", [
        json.dumps({"asin": "p1", "title": "Relay &amp; Kit", "brand": "Supco",
                    "category": ["Industrial &amp; Scientific", "Passive  Components", "Industrial & Scientific"],
                    "description": ["<p>Hard start</p>", "kit.\n\tFor AC units."]}),
        json.dumps({"asin": "p2", "title": "Staples", "brand": "Stanley", "category": [], "description": []}),
        json.dumps({"asin": "p3", "title": "Gloves", "category": ["Safety"], "description": ["dropped by k-core"]}),
        json.dumps({"asin": "p1", "title": "duplicate record: the first wins"}),
    ])
    out = str(tmp_path / "out")
    printed = run_ok(["amazon", f"--reviews={reviews}", f"--meta={meta}", "--name=sci", f"--out={out}", "--kcore=2"],
                     capsys)
    _, rows = read_atomic(os.path.join(out, "sci", "sci.inter"))
    # p3 has 2 reviews but u3 only 1: u3 goes, then p3 (1 left) goes, u1 keeps p1 p2
    assert rows == [["u1", "p1", "0"], ["u1", "p2", "1"], ["u2", "p1", "0"], ["u2", "p2", "1"]]
    header, items = read_atomic(os.path.join(out, "sci", "sci.item"))
    assert header == ITEM_HEADER + "\tdescription:token"
    assert items == [
        ["p1", "Relay & Kit", "Supco", "Industrial_&_Scientific Passive_Components", "Hard start kit. For AC units."],
        ["p2", "Staples", "Stanley", "", ""],
    ]
    assert "2 users, 2 items, 4 interactions" in printed


def test_amazon_no_description_flag(tmp_path, capsys):
    reviews = write_lines(tmp_path / "r.json", [amazon_review("u1", "p1", 1)])
    meta = write_lines(tmp_path / "m.json", [json.dumps({"asin": "p1", "title": "T", "description": ["d"]})])
    out = str(tmp_path / "out")
    run_ok(["amazon", f"--reviews={reviews}", f"--meta={meta}", "--name=nd", f"--out={out}", "--no_description"],
           capsys)
    header, items = read_atomic(os.path.join(out, "nd", "nd.item"))
    assert header == ITEM_HEADER and items == [["p1", "T", "", ""]]


def test_kcore_iterated_hand_built(tmp_path, capsys):
    # k=2: i6, i7 (1 each) go -> u4, u5 drop to 1 -> go -> i3, i5 drop to 1 -> go -> u3 empty.
    # A single pass would keep u3; the stable 2-core is u1, u2 with i1, i2.
    seqs = {"u1": ["i1", "i2"], "u2": ["i1", "i2"], "u3": ["i3", "i5"], "u4": ["i5", "i6"], "u5": ["i3", "i7"]}
    lines = [amazon_review(u, i, t) for u, items in seqs.items() for t, i in enumerate(items)]
    reviews = write_lines(tmp_path / "r.json", lines)
    meta = write_lines(tmp_path / "m.json", [])
    out = str(tmp_path / "out")
    run_ok(["amazon", f"--reviews={reviews}", f"--meta={meta}", "--name=kc", f"--out={out}", "--kcore=2"], capsys)
    _, rows = read_atomic(os.path.join(out, "kc", "kc.inter"))
    assert rows == [["u1", "i1", "0"], ["u1", "i2", "1"], ["u2", "i1", "0"], ["u2", "i2", "1"]]
    _, items = read_atomic(os.path.join(out, "kc", "kc.item"))
    assert [row[0] for row in items] == ["i1", "i2"]


def test_dedup_keeps_first(tmp_path, capsys):
    lines = [amazon_review("u1", "i1", 5), amazon_review("u1", "i2", 2), amazon_review("u1", "i1", 1),
             amazon_review("u1", "i3", 9)]
    reviews = write_lines(tmp_path / "r.json", lines)
    meta = write_lines(tmp_path / "m.json", [])
    out = str(tmp_path / "out")
    run_ok(["amazon", f"--reviews={reviews}", f"--meta={meta}", "--name=dd", f"--out={out}", "--dedup",
            "--keep_time"], capsys)
    _, rows = read_atomic(os.path.join(out, "dd", "dd.inter"))
    assert rows == [["u1", "i1", "1"], ["u1", "i2", "2"], ["u1", "i3", "9"]]
    run_ok(["amazon", f"--reviews={reviews}", f"--meta={meta}", "--name=dd", f"--out={out}"], capsys)  # overwrite
    _, rows = read_atomic(os.path.join(out, "dd", "dd.inter"))
    assert [r[1] for r in rows] == ["i1", "i2", "i1", "i3"] and [r[2] for r in rows] == ["0", "1", "2", "3"]
    assert sorted(os.listdir(os.path.join(out, "dd"))) == ["dd.inter", "dd.item"]


def test_yelp(tmp_path, capsys):
    reviews = write_lines(tmp_path / "review.json", [
        json.dumps({"review_id": "r1", "user_id": "U1", "business_id": "B2", "stars": 4, "date": "2016-03-09 00:00:00"}),
        json.dumps({"review_id": "r2", "user_id": "U1", "business_id": "B1", "stars": 5, "date": "2015-01-01 12:00:00"}),
        json.dumps({"review_id": "r3", "user_id": "U2", "business_id": "B1", "stars": 3, "date": "2017-07-07 07:07:07"}),
    ])
    business = write_lines(tmp_path / "business.json", [
        json.dumps({"business_id": "B1", "name": "Joe's  Diner", "categories": "Restaurants, Fast Food, Restaurants"}),
        json.dumps({"business_id": "B2", "name": "Spa <i>Zen</i>", "categories": None}),
        json.dumps({"business_id": "B3", "name": "Unreviewed", "categories": "Bars"}),
    ])
    out = str(tmp_path / "out")
    printed = run_ok(["yelp", f"--reviews={reviews}", f"--business={business}", "--name=yelpx", f"--out={out}"], capsys)
    header, rows = read_atomic(os.path.join(out, "yelpx", "yelpx.inter"))
    assert header == INTER_HEADER
    assert rows == [["U1", "B1", "0"], ["U1", "B2", "1"], ["U2", "B1", "0"]]
    header, items = read_atomic(os.path.join(out, "yelpx", "yelpx.item"))
    assert header == ITEM_HEADER
    assert items == [["B1", "Joe's Diner", "", "Restaurants Fast_Food"], ["B2", "Spa Zen", "", ""]]
    assert "2 users, 2 items, 3 interactions" in printed

    run_ok(["yelp", f"--reviews={reviews}", f"--business={business}", "--name=yelpt", f"--out={out}", "--keep_time"],
           capsys)
    _, rows = read_atomic(os.path.join(out, "yelpt", "yelpt.inter"))
    assert rows[0] == ["U1", "B1", "1420113600"] and rows[1] == ["U1", "B2", "1457481600"]


def test_format_categories():
    assert format_categories([["Beauty", "Skin Care"], ["Beauty", " Skin  Care ", "Face"]]) == "Beauty Skin_Care Face"
    assert format_categories(None) == "" and format_categories([]) == ""
    assert format_categories(["Tools &amp; Home", "<span>Misc</span>"]) == "Tools_&_Home Misc"


def test_loads_with_recbole(tmp_path, capsys):
    lines = [amazon_review(f"U{u}", f"I{(u + t) % 7}", 1000 + t) for u in range(12) for t in range(6)]
    reviews = write_lines(tmp_path / "r.json.gz", lines, gz=True)
    meta = write_lines(tmp_path / "m.json.gz", [
        repr({"asin": f"I{i}", "title": f"thing {i}", "brand": "b", "categories": [["Home & Kitchen", f"Kind {i}"]]})
        for i in range(7)
    ], gz=True)
    out = str(tmp_path / "out")
    run_ok(["amazon", f"--reviews={reviews}", f"--meta={meta}", "--name=convtest", f"--out={out}", "--kcore=5"], capsys)

    from recbole_llm import Config, create_dataset

    config = Config(model="SASRec", dataset="convtest", config_dict={
        "data_path": out, "checkpoint_dir": str(tmp_path / "s"), "state": "WARNING",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "title", "categories"]},
    })
    dataset = create_dataset(config)
    assert dataset.user_num - 1 == 12 and dataset.item_num - 1 == 7 and dataset.inter_num == 72
    cats = dataset.item_feat["categories"]
    assert cats.shape[0] == 8 and int((cats[1] > 0).sum()) == 2  # two categories per item


def test_missing_files(tmp_path, capsys):
    reviews = write_lines(tmp_path / "r.json", [amazon_review("u", "i", 1)])
    missing = str(tmp_path / "nope" / "meta.json.gz")
    assert main(["amazon", f"--reviews={reviews}", f"--meta={missing}", "--name=x", f"--out={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and missing in err
    assert main(["yelp", f"--reviews={missing}", f"--business={reviews}", "--name=x", f"--out={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "reviews file not found" in err and missing in err
    assert not os.path.exists(tmp_path / "x")


def test_malformed_lines(tmp_path, capsys):
    good_meta = write_lines(tmp_path / "m.json", [repr({"asin": "i", "title": "t"})])
    bad_reviews = write_lines(tmp_path / "bad_reviews.json", [
        amazon_review("u", "i", 1), "", '{"reviewerID": "u", "asin": "j", "unixReviewTime": 2', amazon_review("u", "k", 3),
    ])
    out = str(tmp_path / "out")
    assert main(["amazon", f"--reviews={bad_reviews}", f"--meta={good_meta}", "--name=x", f"--out={out}"]) == 2
    err = capsys.readouterr().err
    assert f"{bad_reviews}:3:" in err and "malformed" in err

    good_reviews = write_lines(tmp_path / "r.json", [amazon_review("u", "i", 1)])
    bad_meta = write_lines(tmp_path / "bad_meta.json.gz", [repr({"asin": "i"}), "{'asin': 'j', 'title': "], gz=True)
    assert main(["amazon", f"--reviews={good_reviews}", f"--meta={bad_meta}", "--name=x", f"--out={out}"]) == 2
    err = capsys.readouterr().err
    assert f"{bad_meta}:2:" in err and "malformed" in err

    not_object = write_lines(tmp_path / "list.json", ["[1, 2]"])
    assert main(["amazon", f"--reviews={not_object}", f"--meta={good_meta}", "--name=x", f"--out={out}"]) == 2
    assert f"{not_object}:1:" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, "x"))


@pytest.mark.parametrize("source,line,field", [
    ("amazon", json.dumps({"reviewerID": "u", "asin": "i"}), "unixReviewTime"),
    ("amazon", json.dumps({"asin": "i", "unixReviewTime": 3}), "reviewerID"),
    ("yelp", json.dumps({"user_id": "u", "date": "2016-03-09 00:00:00"}), "business_id"),
])
def test_missing_field(tmp_path, capsys, source, line, field):
    first = (amazon_review("u", "i", 1) if source == "amazon"
             else json.dumps({"user_id": "u", "business_id": "b", "date": "2016-03-09 00:00:00"}))
    reviews = write_lines(tmp_path / "reviews.json", [first, line])
    other = write_lines(tmp_path / "other.json", [])
    flag = "--meta" if source == "amazon" else "--business"
    assert main([source, f"--reviews={reviews}", f"{flag}={other}", "--name=x", f"--out={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f"{reviews}:2:" in err and f"missing field '{field}'" in err


def test_bad_values(tmp_path, capsys):
    reviews = write_lines(tmp_path / "review.json", [json.dumps({"user_id": "u", "business_id": "b", "date": "March 9"})])
    business = write_lines(tmp_path / "business.json", [])
    assert main(["yelp", f"--reviews={reviews}", f"--business={business}", "--name=x", f"--out={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f"{reviews}:1:" in err and "'date'" in err
    reviews = write_lines(tmp_path / "r.json", [json.dumps({"reviewerID": "u", "asin": "i", "unixReviewTime": "x"})])
    assert main(["amazon", f"--reviews={reviews}", f"--meta={business}", "--name=x", f"--out={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f"{reviews}:1:" in err and "'unixReviewTime'" in err


def test_round_trip_quotes_tabs_newlines_and_non_ascii(tmp_path, capsys):
    """What the converter writes, RecBole reads back identically (a title that begins with a quote included)."""
    lines = [amazon_review(f"U{u}", f"I{(u + t) % 4}", 1000 + t) for u in range(6) for t in range(5)]
    reviews = write_lines(tmp_path / "r.json", lines)
    titles = {
        "I0": '"Best" cream, 12" size',
        "I1": 'tab\there and\nnewline',
        "I2": "Crème brûlée – 日本語 ü",
        "I3": '"',
    }
    meta = write_lines(tmp_path / "m.json", [json.dumps({"asin": i, "title": t, "categories": [["A", "B c"]]}) for i, t in titles.items()])
    out = str(tmp_path / "out")
    run_ok(["amazon", f"--reviews={reviews}", f"--meta={meta}", "--name=quotes", f"--out={out}"], capsys)

    from recbole_llm import Config, create_dataset
    from recbole_llm.data.convert import clean_text

    config = Config(model="SASRec", dataset="quotes", config_dict={"data_path": out, "checkpoint_dir": str(tmp_path / "s"), "state": "WARNING"})
    dataset = create_dataset(config)  # no YAML: every column is loaded
    assert dataset.inter_num == 30
    tokens = dataset.field2id_token["title"]
    for item, title in titles.items():
        row = dataset.token2id("item_id", item)
        assert tokens[int(dataset.item_feat["title"][row])] == clean_text(title)
