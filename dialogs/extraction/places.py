"""Cities, malls and delivery addresses."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dialogs.extraction.entities import AliasIndex
from dialogs.extraction.text import CLAUSE_SPLIT

# Major cities beyond the catalog's own, so a stated city can pick between malls sharing an alias
# and an address can imply its city.
BUILTIN_CITIES = ["北京", "上海", "天津", "重庆", "广州", "深圳", "杭州", "南京", "苏州", "无锡", "常州", "宁波", "温州", "合肥", "武汉", "长沙", "成都", "西安", "郑州", "济南", "青岛", "沈阳", "大连", "哈尔滨", "长春", "石家庄", "太原", "呼和浩特", "南昌", "福州", "厦门", "南宁", "昆明", "贵阳", "兰州", "西宁", "银川", "乌鲁木齐", "拉萨", "海口", "三亚", "东莞", "佛山", "珠海", "中山", "惠州", "泉州", "徐州", "南通", "扬州", "嘉兴", "绍兴", "金华", "台州", "湖州", "烟台", "潍坊", "临沂", "洛阳", "宜昌", "襄阳", "株洲", "岳阳", "绵阳", "柳州", "桂林", "赣州", "芜湖", "保定", "唐山", "廊坊", "邯郸"]
# "南京路" is a street in Shanghai and "中山公园" a park: a city name followed by these is not the city.
_NOT_CITY_AFTER = re.compile(r"[东西南北中]?(?:路|街|大道|大街|公园|大学|医院|广场|桥|站|巷|里)")
_ADDRESS_MARKERS = re.compile(r"省|市|区|县|镇|乡|街道|路|街|道|巷|弄|号|小区|花园|苑|公寓|大厦|栋|幢|单元|室|村|组|楼|府|城|湾|庭|园")
_ADDRESS_LABEL = re.compile(
    r"(?:送货地址|收货地址|配送地址|安装地址|地址|住址|家住|住在|送到|送至|送去|装在|家在)(?:是|为|在)?[:：]?\s*")
_FILLER_START = re.compile(r"^(?:是|在|就是|就在|我家|家里|我家在|我住在|我住|我在|住在|地址是|送到|地址)+")
_FILLER_END = re.compile(r"(?:的|啊|呀|吧|哈|呢|那边|这边|那里|这里|家里|住|这儿|那儿)+$")


@dataclass(frozen=True)
class CityFinding:
    city: str
    start: int
    end: int


def find_cities(text: str, known: tuple[str, ...]) -> list[CityFinding]:
    found = []
    for city in dict.fromkeys((*known, *BUILTIN_CITIES)):
        for match in re.finditer(re.escape(city), text):
            rest = text[match.end() :]
            if rest.startswith("市") or not _NOT_CITY_AFTER.match(rest):
                found.append(CityFinding(city, match.start(), match.end()))
    return sorted(found, key=lambda f: f.start)


def looks_like_address(text: str) -> bool:
    return (len(text) >= 4 and len(_ADDRESS_MARKERS.findall(text)) >= 2) or bool(
        re.search(r"\d+\s*(?:号|弄|栋|幢|室|单元|楼)", text) and _ADDRESS_MARKERS.search(text))


def tidy_address(text: str) -> str:
    return _FILLER_END.sub("", _FILLER_START.sub("", text.strip(" ：:，,。.!！"))).strip()


def find_address(text: str) -> tuple[str, int, int] | None:
    """A delivery address stated with a label ("送到…", "地址是…") or one that plainly is one."""
    for match in _ADDRESS_LABEL.finditer(text):
        end = CLAUSE_SPLIT.search(text, match.end())
        stop = end.start() if end else len(text)
        candidate = tidy_address(text[match.end() : stop])
        if looks_like_address(candidate) and not re.match(r"^(?:了|家|货)", candidate):
            return candidate, match.end(), stop
    position = 0
    for part in CLAUSE_SPLIT.split(text):
        start = text.find(part, position)
        position = start + len(part)
        candidate = tidy_address(part)
        markers = _ADDRESS_MARKERS.findall(candidate)
        if len(markers) >= 3 and re.search(r"\d", candidate) and not re.search(r"买|坏|送的|店|商场", candidate):
            return candidate, start, start + len(part)
    return None


@dataclass(frozen=True)
class MallChoice:
    mall_ids: tuple[str, ...]  # one id when settled; several when an alias is shared and no city decides
    start: int
    end: int


def find_mall(text: str, index: AliasIndex, city_of: dict[str, str], cities: list[str]) -> MallChoice | None:
    """The mall the customer names; a shared alias is narrowed by a stated city, never guessed."""
    hits = [h for h in index.find(text) if not (h.via == "pinyin" and h.weak)]
    hits = [h for h in hits if not re.search(r"不是\s*$|不在\s*$", text[max(0, h.start - 3) : h.start])]
    if not hits:
        return None
    hit = hits[0]
    candidates = hit.keys
    if len(candidates) > 1 and cities:
        narrowed = tuple(k for k in candidates if city_of.get(k) in cities)
        candidates = narrowed or candidates
    return MallChoice(candidates, hit.start, hit.end)
