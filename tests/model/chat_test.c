/* Tests for model/chat.c: exact output of each built-in template, detection from the Jinja
 * templates real GGUF files carry, and refusal of unknown templates. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

static const model_chat_msg_t conv[] = {
    {"system", "You are helpful."},
    {"user", "Hi"},
    {"assistant", " Hello!"},
    {"user", "Bye"},
};

static void expect_chat(const char *tmpl, bool add_ass, const char *want)
{
    char *out = NULL;
    cr_assert_eq(model_chat_apply(tmpl, conv, 4, add_ass, &out), 0, "%s", tmpl);
    cr_expect_str_eq(out, want, "%s", tmpl);
    free(out);
}

Test(model_chat, chatml_output)
{
    expect_chat("chatml", true,
                "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                "<|im_start|>assistant\n Hello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
                "<|im_start|>assistant\n");
}

Test(model_chat, mixtral_llama2_output)
{
    /* Mixtral-Instruct's template detects as llama2: no system block, </s> after answers. */
    expect_chat("llama2", true,
                "[INST] You are helpful.\nHi [/INST] Hello!</s>[INST] Bye [/INST]");
    expect_chat("llama2-sys", false,
                "[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nHi [/INST] Hello!</s>[INST] Bye "
                "[/INST]");
    expect_chat("mistral-v1", false,
                " [INST] You are helpful.\n\nHi [/INST]  Hello!</s> [INST] Bye [/INST]");
    expect_chat("mistral-v3", false,
                "[INST] You are helpful.\n\nHi[/INST] Hello!</s>[INST] Bye[/INST]");
}

Test(model_chat, tulu_olmoe_output)
{
    expect_chat("tulu", true,
                "<|system|>\nYou are helpful.\n<|user|>\nHi\n<|assistant|>\n Hello!<|endoftext|>\n"
                "<|user|>\nBye\n<|assistant|>\n");
}

Test(model_chat, llama3_output_trims_content)
{
    expect_chat("llama3", true,
                "<|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

Test(model_chat, deepseek_output)
{
    expect_chat("deepseek2", true,
                "You are helpful.\n\nUser: Hi\n\nAssistant:  Hello!<\xEF\xBD\x9C" "end\xE2\x96\x81"
                "of\xE2\x96\x81sentence\xEF\xBD\x9C>User: Bye\n\nAssistant:");
}

Test(model_chat, detects_family_markers)
{
    cr_expect_str_eq(model_chat_detect("{% for m in messages %}{{'<|im_start|>' + m['role'] + "
                                       "'\\n' + m['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"),
                     "chatml");
    cr_expect_str_eq(model_chat_detect("{{ bos_token }}{% for message in messages %}{{ '[INST] ' "
                                       "+ message['content'] + ' [/INST]' }}{% endfor %}"),
                     "llama2");
    cr_expect_str_eq(model_chat_detect("{{'<|start_header_id|>' + m['role'] + "
                                       "'<|end_header_id|>\\n\\n'}}"),
                     "llama3");
    cr_expect_str_eq(model_chat_detect("{{ '<|user|>\\n' + message['content'] + '\\n' }}{{ "
                                       "'<|assistant|>\\n' + message['content'] + eos_token }}"),
                     "tulu");
    cr_expect_str_eq(model_chat_detect("{{'<|user|>' + '\\n' + message['content'] + '<|end|>' + "
                                       "'\\n' + '<|assistant|>' + '\\n'}}"),
                     "phi3");
    cr_expect_str_eq(model_chat_detect("mistral-v7"), "mistral-v7");
    cr_expect_null(model_chat_detect("{{ messages }}"));
}

Test(model_chat, unknown_template_and_bad_arguments_are_refused)
{
    char *out = (char *)1;
    cr_expect_eq(model_chat_apply("{{ nothing known }}", conv, 4, true, &out), -ENOTSUP);
    cr_expect_null(out);
    cr_expect_eq(model_chat_apply("chatml", NULL, 2, true, &out), -EINVAL);
    model_chat_msg_t bad = {"user", NULL};
    cr_expect_eq(model_chat_apply("chatml", &bad, 1, true, &out), -EINVAL);
    cr_assert_eq(model_chat_apply(NULL, conv, 0, true, &out), 0, "NULL means chatml");
    cr_expect_str_eq(out, "<|im_start|>assistant\n");
    free(out);
}
