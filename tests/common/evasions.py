"""Evasions people use against `any(word in prompt for word in banned_words)`, per class, in
Chinese and English. Each entry is (evasive text, the list entry it must match)."""

from __future__ import annotations

TERMS = """
@pinyin on
confidential: 机密
customer-data: 客户名单
code-name: 内部代号
@pinyin off
confidential: confidential
customer-data: customer list
confidential: internal use only
"""

EVASIONS: dict[str, list[tuple[str, str]]] = {
    "spacing": [
        ("机 密", "机密"),
        ("客 户 名 单", "客户名单"),
        ("内\u3000部\u3000代\u3000号", "内部代号"),
        ("机\t\n密", "机密"),
        ("c o n f i d e n t i a l", "confidential"),
        ("customer  list", "customer list"),
        ("internal\tuse\u3000 only", "internal use only"),  # a line break between words ends a phrase (issue 16)
        ("customerlist", "customer list"),
    ],
    "punctuation": [
        ("机.密", "机密"),
        ("客-户-名-单", "客户名单"),
        ("内/部/代/号", "内部代号"),
        ("机，密", "机密"),
        ("机★密", "机密"),
        ("客户🙂名单", "客户名单"),
        ("c.o.n.f.i.d.e.n.t.i.a.l", "confidential"),
        ("customer_list", "customer list"),
        ("internal-use-only", "internal use only"),
        ("con*fid*ential", "confidential"),
    ],
    "zero_width": [
        ("机\u200b密", "机密"),
        ("客\u200c户\u200d名\u2060单", "客户名单"),
        ("\ufeff内部\u00ad代号", "内部代号"),
        ("机\u202e密", "机密"),
        ("机\U000e0041密", "机密"),
        ("机\u0301密", "机密"),
        ("con\u200bfiden\u200ctial", "confidential"),
        ("customer\u2060list", "customer list"),
        ("inter\u00adnal use on\u200dly", "internal use only"),
    ],
    "full_width": [
        ("机＿密", "机密"),
        ("客户｜名单", "客户名单"),
        ("ｊｉｍｉ", "机密"),
        ("ｃｏｎｆｉｄｅｎｔｉａｌ", "confidential"),
        ("ＣＵＳＴＯＭＥＲ　ＬＩＳＴ", "customer list"),
        ("𝐢𝐧𝐭𝐞𝐫𝐧𝐚𝐥 𝐮𝐬𝐞 𝐨𝐧𝐥𝐲", "internal use only"),
    ],
    "traditional": [
        ("機密", "机密"),
        ("客戶名單", "客户名单"),
        ("內部代號", "内部代号"),
        ("機 密", "机密"),
        ("客戸名単", "客户名单"),  # Japanese shinjitai 戸 (a UTS #39 look-alike of 戶) and 単 (OpenCC jp2t)
        ("客戸名單", "客户名单"),
    ],
    "look_alike": [
        ("сonfidential", "confidential"),
        ("CОNFIDЕNTIAL", "confidential"),
        ("custοmer list", "customer list"),
        ("іnternal use only", "internal use only"),
        ("ϲonfidential", "confidential"),
        ("ᴄᴏɴꜰɪᴅᴇɴᴛɪᴀʟ", "confidential"),
        ("јіmі", "机密"),
        ("kehu mіngdаn", "客户名单"),
        ("ꓚꓳꓠꓝꓲꓓꓰꓠꓔꓲꓮꓡ", "confidential"),  # Lisu
        ("ᏟꓳNFꓲDENTꓲAL", "confidential"),  # Cherokee and Lisu
        ("ⲤⲞNFⲒDENTⲒAL", "confidential"),  # Coptic
        ("cuՏtomer liՏt", "customer list"),  # Armenian
        ("客戸名单", "客户名单"),  # 戸: the UTS #39 look-alike of 戶
        ("机宻", "机密"),  # 宻: a Unihan semantic variant of 密
        ("機宻", "机密"),
    ],
    "case": [
        ("CONFIDENTIAL", "confidential"),
        ("Customer List", "customer list"),
        ("InTeRnAl UsE oNlY", "internal use only"),
        ("JIMI", "机密"),
        ("KeHuMingDan", "客户名单"),
        ("NeiBuDaiHao", "内部代号"),
    ],
    "pinyin": [
        ("jimi", "机密"),
        ("ji mi", "机密"),
        ("jī mì", "机密"),
        ("kehumingdan", "客户名单"),
        ("ke hu ming dan", "客户名单"),
        ("Kèhù míngdān", "客户名单"),
        ("neibudaihao", "内部代号"),
        ("Nèibù dàihào", "内部代号"),
        ("机mi", "机密"),
        ("ke户名dan", "客户名单"),
        ("内部daihao", "内部代号"),
        ("ji1 mi4", "机密"),
        ("ji1mi4", "机密"),
        ("ji1-mi4", "机密"),
        ("ji-mi", "机密"),
        ("ke4hu4 ming2dan1", "客户名单"),
        ("nei4 bu4 dai4 hao4", "内部代号"),
        ("jī-mì", "机密"),
    ],
    "identifiers": [
        ("#ConfidentialProject", "confidential"),
        ("ConfidentialReport.pdf", "confidential"),
        ("CONFIDENTIALFILES", "confidential"),
        ("CustomerListExport", "customer list"),
        ("customer_list_2024.xlsx", "customer list"),
        ("InternalUseOnlyDraft", "internal use only"),
        ("#客户名单", "客户名单"),
        ("内部代号_v2.docx", "内部代号"),
    ],
    "symbols": [
        ("内部™代号", "内部代号"),
        ("机℡密", "机密"),
        ("客户㎏名单", "客户名单"),
        ("confi™dential", "confidential"),
    ],
    "combined": [
        ("機\u200b 密", "机密"),
        ("ｃ-о-ｎ-ｆ-і-ｄ-е-ｎ-ｔ-і-а-ｌ", "confidential"),
        ("客戶\u200b名-單", "客户名单"),
        ("J I\u200b M I", "机密"),
    ],
}

# How the evasions are embedded: at the start, in the middle and at the end of a real prompt.
CONTEXTS = (
    "{}",
    "设计一张蓝色海报，标题写“{}”，金色字体",
    "A poster with the words {} in bold red letters",
    "海报文案：{}",
    "{}, printed on a white card",
)
