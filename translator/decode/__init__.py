"""Decoding: greedy and beam search (`search`), the fast cached step (`fast_step`), the Translator
(`translator`) and the CTranslate2 engine (`ct2`)."""
