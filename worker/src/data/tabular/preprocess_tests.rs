//! Tests of the tabular preprocessing (kept apart: the module would pass 500 lines).

use super::*;

fn spec(json: &str) -> TabularSpec {
    serde_json::from_str(json).unwrap()
}

fn houses() -> RawTable {
    RawTable::from_columns(
        "h.csv",
        vec![
            ("city", vec!["Austin", "Waco", "Austin", "", "Dallas", "Tyler"]),
            ("listings", vec!["10", "NA", "30", "20", "1000", ""]),
            ("date", vec!["2015-07-31", "2015-01-05", "", "2016-02-29", "2015-07-31", "2016-03-01"]),
            ("sales", vec!["100", "200", "300", "400", "500", "600"]),
        ],
    )
}

fn regression() -> TabularSpec {
    spec(r#"{"target": "sales", "categorical": ["city"], "continuous": ["listings"], "dates": ["date"]}"#)
}

#[test]
fn fitted_on_the_training_rows_only() {
    let all = houses();
    let train = all.select(&[0, 1, 2, 3]);
    let p = Preprocessing::fit(&train, &regression()).unwrap();
    let city = &p.categorical[0];
    assert_eq!(city.levels, ["Austin", "Waco"], "Dallas and Tyler are only in later rows");
    // listings: train values 10, 30, 20 and one missing → median 20, filled, mean 20
    let l = &p.continuous[0];
    assert_eq!((l.median, l.mean), (20.0, 20.0));
    assert!((l.std - 50f64.sqrt()).abs() < 1e-9, "{l:?}");
    let test = p.transform(&all.select(&[4, 5]), "test").unwrap();
    // unseen level → 0; the 1000 is normalised by the training statistics
    assert_eq!(test.cats[0], 0);
    assert!((test.conts[0] - ((1000.0 - 20.0) / l.std) as f32).abs() < 1e-3);
    assert_eq!(test.targets, Targets::Values(vec![500.0, 600.0]));
    assert!(test.unseen >= 2, "Dallas, Tyler and new date parts: {}", test.unseen);
}

#[test]
fn missing_continuous_values_take_the_median_and_a_flag() {
    let all = houses();
    let p = Preprocessing::fit(&all, &regression()).unwrap();
    let flag = p.categorical.iter().position(|c| c.name == "listings_na").expect("a flag column");
    assert_eq!(p.categorical[flag].source, Source::MissingFlag { column: "listings".into() });
    let t = p.transform(&all, "train").unwrap();
    let l = &p.continuous[0];
    assert_eq!(l.median, 25.0, "the median of 10, 30, 20 and 1000");
    let at = |r: usize| t.conts[r * t.n_cont];
    assert_eq!(at(1), ((25.0 - l.mean) / l.std) as f32, "a missing value is the median");
    assert_eq!(at(5), at(1));
    let flags: Vec<i64> = (0..6).map(|r| t.cats[r * t.n_cat + flag]).collect();
    assert_eq!(flags, [1, 2, 1, 1, 1, 2], "false = 1, true = 2");
    // a missing categorical value is index 0 too
    assert_eq!(t.cats[3 * t.n_cat], 0);
}

#[test]
fn a_log_column_is_transformed_before_its_statistics() {
    let t = RawTable::from_columns(
        "l.csv",
        vec![("n", vec!["0", "NA", "99", "9"]), ("y", vec!["1", "2", "3", "4"])],
    );
    let mut s = spec(r#"{"target": "y", "continuous": ["n"], "log_continuous": ["n"]}"#);
    let p = Preprocessing::fit(&t, &s).unwrap();
    let n = &p.continuous[0];
    assert!(n.log && (n.median - 10f64.ln()).abs() < 1e-12, "{n:?}");
    let x = p.transform(&t, "train").unwrap().conts[2];
    assert!((f64::from(x) - (100f64.ln() - n.mean) / n.std).abs() < 1e-5);
    s.log_continuous.clear();
    assert!(!Preprocessing::fit(&t, &s).unwrap().continuous[0].log);
    let bad = RawTable::from_columns("l.csv", vec![("n", vec!["-2"]), ("y", vec!["1"])]);
    let e = p.transform(&bad, "test").unwrap_err().to_string();
    assert!(e.contains("line 2, column \"n\": -2 is not > -1"), "{e}");
}

#[test]
fn dates_become_categorical_parts() {
    let all = houses();
    let p = Preprocessing::fit(&all, &regression()).unwrap();
    let names: Vec<&str> = p.categorical.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "city",
            "date_year",
            "date_month",
            "date_week",
            "date_dayofweek",
            "date_day",
            "date_is_month_end",
            "listings_na"
        ]
    );
    let t = p.transform(&all, "train").unwrap();
    let level = |r: usize, c: usize| {
        let i = t.cats[r * t.n_cat + c];
        if i == 0 {
            "-".to_string()
        } else {
            p.categorical[c].levels[i as usize - 1].clone()
        }
    };
    // 2015-07-31: a Friday, ISO week 31, the month's last day
    let row0: Vec<String> = (1..7).map(|c| level(0, c)).collect();
    assert_eq!(row0, ["2015", "7", "31", "4", "31", "true"]);
    assert_eq!(level(3, 6), "true", "2016-02-29 ends its month");
    assert_eq!(level(2, 1), "-", "a missing date is index 0 in every part");
}

#[test]
fn bad_values_are_named_with_their_line() {
    let bad = houses().select(&[0, 1, 2]);
    let t = RawTable::from_columns(
        "b.csv",
        vec![
            ("city", vec!["a", "b"]),
            ("listings", vec!["1", "many"]),
            ("date", vec!["", ""]),
            ("sales", vec!["1", "2"]),
        ],
    );
    let e = Preprocessing::fit(&t, &regression()).unwrap_err().to_string();
    assert!(e.contains("b.csv: line 3, column \"listings\": \"many\" is not a number"), "{e}");
    let p = Preprocessing::fit(&bad, &regression()).unwrap();
    let t = RawTable::from_columns(
        "b.csv",
        vec![
            ("city", vec!["a"]),
            ("listings", vec!["1"]),
            ("date", vec!["2015-02-30"]),
            ("sales", vec!["1"]),
        ],
    );
    let e = p.transform(&t, "test").unwrap_err().to_string();
    assert!(e.contains("column \"date\": \"2015-02-30\" is not a date"), "{e}");
    let t = RawTable::from_columns(
        "b.csv",
        vec![("city", vec!["a"]), ("listings", vec!["1"]), ("date", vec![""]), ("sales", vec!["lots"])],
    );
    let e = p.transform(&t, "test").unwrap_err().to_string();
    assert!(e.contains("column \"sales\": \"lots\" is not a number"), "{e}");
    let t = RawTable::from_columns(
        "b.csv",
        vec![("city", vec!["a"]), ("listings", vec!["1"]), ("date", vec![""]), ("sales", vec!["0"])],
    );
    let e = p.transform(&t, "test").unwrap_err().to_string();
    assert!(e.contains("log target must be > 0") && e.contains("log_target = false"), "{e}");
}

#[test]
fn rows_without_a_target_are_dropped_and_counted() {
    let t = RawTable::from_columns(
        "t.csv",
        vec![("y", vec!["1", "NA", "", "4"]), ("x", vec!["a", "b", "c", "d"])],
    );
    let (kept, dropped) = drop_missing_target(&t, &spec(r#"{"target": "y", "categorical": ["x"]}"#)).unwrap();
    assert_eq!(dropped, 2);
    assert_eq!(kept.column("x").unwrap(), ["a", "d"]);
    assert_eq!(kept.lines, [2, 5]);
}

#[test]
fn classes_from_a_threshold_or_the_labels() {
    let t = RawTable::from_columns(
        "s.csv",
        vec![("profit", vec!["-3.5", "0", "12"]), ("mode", vec!["a", "b", "a"])],
    );
    let s =
        spec(r#"{"target": "profit", "kind": "classification", "threshold": 0.0, "categorical": ["mode"]}"#);
    let p = Preprocessing::fit(&t, &s).unwrap();
    assert_eq!(p.outputs(), 2);
    assert_eq!(p.transform(&t, "train").unwrap().targets, Targets::Classes(vec![0, 0, 1]));
    let s = spec(r#"{"target": "mode", "kind": "classification", "categorical": ["profit"]}"#);
    let p = Preprocessing::fit(&t.select(&[0, 1]), &s).unwrap();
    assert_eq!(p.transform(&t.select(&[0, 1]), "train").unwrap().targets, Targets::Classes(vec![0, 1]));
    let extra = RawTable::from_columns("s.csv", vec![("profit", vec!["1"]), ("mode", vec!["c"])]);
    let e = p.transform(&extra, "test").unwrap_err().to_string();
    assert!(e.contains("the test split has class \"c\""), "{e}");
}

#[test]
fn the_saved_preprocessing_repeats_exactly() {
    let all = houses();
    let p = Preprocessing::fit(&all.select(&[0, 1, 2, 3]), &regression()).unwrap();
    let back = Preprocessing::from_json(&p.to_json().unwrap()).unwrap();
    assert_eq!(back, p);
    assert_eq!(back.transform(&all, "test").unwrap(), p.transform(&all, "test").unwrap());
    let e = Preprocessing::from_json(&p.to_json().unwrap().replace("\"format\": 1", "\"format\": 9"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("format 9"), "{e}");
}
