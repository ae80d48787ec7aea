"""The OData query engine: what a Dataverse client gets back for $filter, $select, $orderby, $top and paging."""

from __future__ import annotations

import pytest

from portal.m365.simulator import odata

TARGET = odata.QueryTarget(
    type_name="mailbox",
    key="mailboxid",
    kinds={
        "mailboxid": "guid",
        "name": "string",
        "emailaddress": "string",
        "incomingemaildeliverymethod": "choice",
        "testemailconfigurationretrycount": "int",
        "isforwardmailbox": "bool",
        "createdon": "datetime",
        "_emailserverprofile_value": "lookup",
    },
)

PROFILE = "5b6f1e2a-0c3d-4e5f-8a9b-0c1d2e3f4a5b"


def _id(number: int) -> str:
    return f"00000000-0000-0000-0000-{number:012d}"


ROWS = [
    {
        "mailboxid": _id(1),
        "name": "Sales",
        "emailaddress": "sales@contoso.com",
        "incomingemaildeliverymethod": 2,
        "testemailconfigurationretrycount": 0,
        "isforwardmailbox": False,
        "createdon": "2026-01-10T09:00:00Z",
        "_emailserverprofile_value": PROFILE,
    },
    {
        "mailboxid": _id(2),
        "name": "O'Brien, Kate",
        "emailaddress": "kate.obrien@contoso.com",
        "incomingemaildeliverymethod": 1,
        "testemailconfigurationretrycount": 3,
        "isforwardmailbox": False,
        "createdon": "2026-02-01T12:30:00Z",
        "_emailserverprofile_value": None,
    },
    {
        "mailboxid": _id(3),
        "name": "Support",
        "emailaddress": None,
        "incomingemaildeliverymethod": 3,
        "testemailconfigurationretrycount": 1,
        "isforwardmailbox": True,
        "createdon": "2025-12-24T18:00:00Z",
        "_emailserverprofile_value": PROFILE,
    },
    {
        "mailboxid": _id(4),
        "name": "sales EMEA",
        "emailaddress": "sales.emea@Contoso.com",
        "incomingemaildeliverymethod": 2,
        "testemailconfigurationretrycount": 10,
        "isforwardmailbox": False,
        "createdon": "2026-03-05T00:00:00Z",
        "_emailserverprofile_value": None,
    },
]


def names(expression: str) -> list[str]:
    predicate = odata.parse_filter(expression, TARGET)
    return [row["name"] for row in ROWS if predicate(row) is True]


class TestFilter:
    def test_string_equality_ignores_case_as_dataverse_does(self):
        assert names("name eq 'SALES'") == ["Sales"]

    def test_quotes_inside_strings_are_doubled(self):
        assert names("name eq 'O''Brien, Kate'") == ["O'Brien, Kate"]

    def test_contains_startswith_endswith(self):
        assert names("contains(emailaddress,'EMEA')") == ["sales EMEA"]
        assert names("startswith(name,'sales')") == ["Sales", "sales EMEA"]
        assert names("endswith(emailaddress, '@contoso.com')") == ["Sales", "O'Brien, Kate", "sales EMEA"]

    def test_null_comparisons(self):
        assert names("emailaddress eq null") == ["Support"]
        assert names("_emailserverprofile_value ne null") == ["Sales", "Support"]

    def test_ne_leaves_out_rows_where_the_column_is_null(self):
        assert names("emailaddress ne 'sales@contoso.com'") == ["O'Brien, Kate", "sales EMEA"]
        assert names("emailaddress ne 'sales@contoso.com' or emailaddress eq null") == [
            "O'Brien, Kate",
            "Support",
            "sales EMEA",
        ]

    def test_lookup_value_compares_with_an_unquoted_guid_in_any_case(self):
        assert names(f"_emailserverprofile_value eq {PROFILE.upper()}") == ["Sales", "Support"]

    def test_numbers_booleans_and_choices(self):
        assert names("testemailconfigurationretrycount ge 3") == ["O'Brien, Kate", "sales EMEA"]
        assert names("testemailconfigurationretrycount lt 1.5") == ["Sales", "Support"]
        assert names("isforwardmailbox eq true") == ["Support"]
        assert names("isforwardmailbox") == ["Support"]
        assert names("incomingemaildeliverymethod eq 2") == ["Sales", "sales EMEA"]

    def test_dates_and_date_times(self):
        assert names("createdon ge 2026-02-01") == ["O'Brien, Kate", "sales EMEA"]
        assert names("createdon lt 2026-01-10T09:00:01Z") == ["Sales", "Support"]
        assert names("createdon gt 2026-01-10T10:00:00+01:00") == ["O'Brien, Kate", "sales EMEA"]

    def test_and_binds_tighter_than_or_and_parentheses_regroup(self):
        assert names(
            "name eq 'Support' or incomingemaildeliverymethod eq 2 and testemailconfigurationretrycount gt 5"
        ) == [
            "Support",
            "sales EMEA",
        ]
        assert names(
            "(name eq 'Support' or incomingemaildeliverymethod eq 2) and testemailconfigurationretrycount gt 5"
        ) == ["sales EMEA"]

    def test_not(self):
        assert names("not contains(name,'sales')") == ["O'Brien, Kate", "Support"]
        assert names("not (incomingemaildeliverymethod eq 2 or isforwardmailbox eq true)") == ["O'Brien, Kate"]

    def test_literal_on_the_left(self):
        assert names("5 lt testemailconfigurationretrycount") == ["sales EMEA"]

    def test_unknown_column_is_named_in_the_error(self):
        with pytest.raises(odata.ODataQueryError) as caught:
            odata.parse_filter("Name eq 'Sales'", TARGET)
        assert caught.value.code == "0x0"
        assert (
            caught.value.message == "Could not find a property named 'Name' on type 'Microsoft.Dynamics.CRM.mailbox'."
        )

    @pytest.mark.parametrize(
        "expression",
        ["name eq", "name eq 'unterminated", "(name eq 'Sales'", "name eq 'Sales')", "name == 'Sales'", "and"],
    )
    def test_syntax_errors(self, expression):
        with pytest.raises(odata.ODataQueryError) as caught:
            odata.parse_filter(expression, TARGET)
        assert caught.value.code == "0x80060888"
        assert caught.value.message.startswith("Syntax error at position")

    def test_a_quoted_guid_is_not_a_guid(self):
        with pytest.raises(odata.ODataQueryError, match=r"incompatible types.*'Edm\.Guid' and 'Edm\.String'"):
            odata.parse_filter(f"_emailserverprofile_value eq '{PROFILE}'", TARGET)

    def test_unknown_functions_are_refused(self):
        with pytest.raises(odata.ODataQueryError, match="unknown function with name 'substringof'"):
            odata.parse_filter("substringof('x', name)", TARGET)


class TestSelectAndOrder:
    def test_select_validates_every_name(self):
        assert odata.parse_select("name, emailaddress,name", TARGET) == ["name", "emailaddress"]
        with pytest.raises(odata.ODataQueryError, match="property named 'bogus'"):
            odata.parse_select("name,bogus", TARGET)

    def test_order_by_several_keys(self):
        query = odata.Query(orderby=odata.parse_orderby("incomingemaildeliverymethod desc,name", TARGET))
        page = odata.execute(ROWS, query, TARGET)
        assert [row["name"] for row in page.rows] == ["Support", "Sales", "sales EMEA", "O'Brien, Kate"]

    def test_nulls_come_first_ascending_and_last_descending(self):
        ascending = odata.execute(ROWS, odata.Query(orderby=odata.parse_orderby("emailaddress", TARGET)), TARGET)
        descending = odata.execute(ROWS, odata.Query(orderby=odata.parse_orderby("emailaddress desc", TARGET)), TARGET)
        assert ascending.rows[0]["name"] == "Support"
        assert descending.rows[-1]["name"] == "Support"

    def test_skip_is_refused(self):
        with pytest.raises(odata.ODataQueryError, match=r"\$skip is not supported"):
            odata.parse_query({"$skip": "10"}, TARGET)

    def test_top_limits_rows(self):
        page = odata.execute(ROWS, odata.parse_query({"$top": "2", "$orderby": "name"}, TARGET), TARGET)
        assert [row["name"] for row in page.rows] == ["O'Brien, Kate", "Sales"]
        assert page.next_skiptoken is None


def _many(count: int) -> list[dict]:
    return [
        {
            "mailboxid": _id(number),
            "name": f"Mailbox {number % 97:02d}",
            "emailaddress": f"box{number}@contoso.com",
            "incomingemaildeliverymethod": number % 4,
            "testemailconfigurationretrycount": number % 7,
            "isforwardmailbox": number % 5 == 0,
            "createdon": "2026-01-01T00:00:00Z",
            "_emailserverprofile_value": PROFILE if number % 3 else None,
        }
        for number in range(count)
    ]


class TestPaging:
    def test_pages_reach_every_row_once_in_order(self):
        rows = _many(12_000)
        query = odata.parse_query({"$orderby": "name desc,testemailconfigurationretrycount"}, TARGET)
        seen: list[dict] = []
        while True:
            page = odata.execute(rows, query, TARGET, page_size=5000)
            assert len(page.rows) <= 5000
            seen.extend(page.rows)
            if not page.next_skiptoken:
                break
            query.skiptoken = page.next_skiptoken
        assert len(seen) == 12_000
        assert len({row["mailboxid"] for row in seen}) == 12_000
        keys = [(row["name"], -row["testemailconfigurationretrycount"]) for row in seen]
        assert keys == sorted(keys, reverse=True)

    def test_a_row_deleted_between_pages_does_not_shift_the_next_page(self):
        rows = _many(30)
        query = odata.parse_query({"$orderby": "emailaddress"}, TARGET)
        first = odata.execute(rows, query, TARGET, page_size=10)
        rows.remove(first.rows[-1])
        query.skiptoken = first.next_skiptoken
        second = odata.execute(rows, query, TARGET, page_size=10)
        everything = sorted(row["emailaddress"] for row in rows)
        assert [row["emailaddress"] for row in second.rows] == everything[9:19]

    def test_count_is_capped_at_5000_as_dataverse_does(self):
        page = odata.execute(_many(6000), odata.parse_query({"$count": "true"}, TARGET), TARGET, page_size=10)
        assert page.count == 5000
        assert page.total == 6000

    def test_top_spans_pages(self):
        query = odata.parse_query({"$top": "25"}, TARGET)
        rows = _many(100)
        first = odata.execute(rows, query, TARGET, page_size=10)
        query.skiptoken = first.next_skiptoken
        second = odata.execute(rows, query, TARGET, page_size=10)
        query.skiptoken = second.next_skiptoken
        third = odata.execute(rows, query, TARGET, page_size=10)
        assert [len(first.rows), len(second.rows), len(third.rows)] == [10, 10, 5]
        assert third.next_skiptoken is None

    def test_a_skiptoken_from_another_ordering_is_refused(self):
        rows = _many(30)
        first = odata.execute(rows, odata.parse_query({"$orderby": "name"}, TARGET), TARGET, page_size=10)
        other = odata.parse_query({"$orderby": "emailaddress", "$skiptoken": first.next_skiptoken}, TARGET)
        with pytest.raises(odata.ODataQueryError, match="skiptoken"):
            odata.execute(rows, other, TARGET, page_size=10)

    def test_a_tampered_skiptoken_is_refused(self):
        query = odata.parse_query({"$skiptoken": '<cookie pagenumber="2" pagingcookie="garbage" />'}, TARGET)
        with pytest.raises(odata.ODataQueryError, match="skiptoken"):
            odata.execute(_many(3), query, TARGET)


def test_prefer_header_values_with_commas_inside_quotes():
    assert odata.parse_prefer(
        'return=representation, odata.include-annotations="OData.Community.Display.V1.FormattedValue,'
        'Microsoft.Dynamics.CRM.lookuplogicalname",odata.maxpagesize=50'
    ) == {
        "return": "representation",
        "odata.include-annotations": (
            "OData.Community.Display.V1.FormattedValue,Microsoft.Dynamics.CRM.lookuplogicalname"
        ),
        "odata.maxpagesize": "50",
    }
