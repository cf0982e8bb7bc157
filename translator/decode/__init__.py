"""Decoding: the one engine interface (`engine`), its native implementation (`translator`) and
its CTranslate2 one (`ct2`), greedy and beam search over the model (`search`), and cutting texts
into sentences and joining translations back (`pieces`)."""
