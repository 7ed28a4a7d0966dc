#include "worker/engine/text/chat_template.h"

#include "gtest/gtest.h"

namespace lathe::engine {
namespace {

TEST(ChatTemplateTest, RendersZephyrAndMarksAssistantTurns) {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Detect(
      "{{ '<|user|>\n' + message['content'] + eos_token }} "
      "{{ '<|system|>\n' }} {{ '<|assistant|>\n' }}",
      "</s>");
  ASSERT_TRUE(t.ok()) << t.status();
  RenderedChat r = t->Render({{"system", "S"},
                              {"user", "Hi"},
                              {"assistant", "Yo", /*train=*/false},
                              {"user", "Q"},
                              {"assistant", "A"}});
  EXPECT_EQ(r.text,
            "<|system|>\nS</s>\n<|user|>\nHi</s>\n<|assistant|>\nYo</s>\n"
            "<|user|>\nQ</s>\n<|assistant|>\nA</s>\n");
  ASSERT_EQ(r.trainable.size(), 1u);  // the weight-0 turn is not trained
  EXPECT_EQ(r.text.substr(r.trainable[0].begin,
                          r.trainable[0].end - r.trainable[0].begin),
            "A</s>");
  EXPECT_EQ(r.trainable[0].message, 4);
}

// The conversation every family renders below: a system prompt, a turn
// excluded from the loss (weight 0), and a final trained answer.
const std::vector<ChatMessage> kConversation = {{"system", "S"},
                                                {"user", "Hi"},
                                                {"assistant", "Yo", false},
                                                {"user", "Q"},
                                                {"assistant", "A"}};

// The trained text of `r`, one string per range.
std::vector<std::string> Trained(const RenderedChat& r) {
  std::vector<std::string> out;
  for (const TrainableRange& t : r.trainable) {
    out.push_back(r.text.substr(t.begin, t.end - t.begin));
  }
  return out;
}

// Meta-Llama-3-8B-Instruct's tokenizer_config chat_template.
constexpr char kLlama3[] =
    R"({% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %})";

// The parts of Llama-3.1-8B-Instruct's template that decide the text
// (tools left out).
constexpr char kLlama31[] =
    R"({{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %})";

// Qwen2.5-Instruct's template, tools branch left out.
constexpr char kQwen25[] =
    R"({%- if tools %}{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %})";

// A plain ChatML template, without a default system prompt.
constexpr char kChatMl[] =
    R"({% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})";

// Mistral-7B-Instruct-v0.2's template (system folded into the first turn).
constexpr char kMistral[] =
    R"({%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- endif %}
{%- endfor %})";

TEST(ChatTemplateTest, RendersLlama3) {
  absl::StatusOr<ChatTemplate> t =
      ChatTemplate::Detect(kLlama3, "<|eot_id|>", "<|begin_of_text|>");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->family(), ChatTemplate::Family::kLlama3);
  std::vector<ChatMessage> messages = kConversation;
  messages[4].content = "  A\n";  // | trim
  const RenderedChat r = t->Render(messages);
  EXPECT_EQ(r.text,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            "S<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
            "Hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
            "Yo<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
            "Q<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
            "A<|eot_id|>");
  EXPECT_EQ(Trained(r), (std::vector<std::string>{"A<|eot_id|>"}));
  EXPECT_EQ(r.trainable[0].message, 4);
  EXPECT_EQ(t->RenderPrompt({{"user", "Hi"}}),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
            "Hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplateTest, RendersLlama31WithItsDatedSystemBlock) {
  absl::StatusOr<ChatTemplate> t =
      ChatTemplate::Detect(kLlama31, "<|eot_id|>", "<|begin_of_text|>");
  ASSERT_TRUE(t.ok()) << t.status();
  const RenderedChat r = t->Render(kConversation);
  EXPECT_EQ(r.text,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024"
            "\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
            "Hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
            "Yo<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
            "Q<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
            "A<|eot_id|>");
  EXPECT_EQ(Trained(r), (std::vector<std::string>{"A<|eot_id|>"}));
  // Without a system message the block is still there, empty.
  EXPECT_EQ(t->Render({{"user", "Hi"}, {"assistant", "A"}}).text,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024"
            "\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
            "Hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
            "A<|eot_id|>");
}

TEST(ChatTemplateTest, RendersChatMlWithQwenDefaultSystemPrompt) {
  absl::StatusOr<ChatTemplate> t =
      ChatTemplate::Detect(kQwen25, "<|im_end|>", "");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->family(), ChatTemplate::Family::kChatMl);
  const RenderedChat r = t->Render(kConversation);
  EXPECT_EQ(r.text,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nYo<|im_end|>\n<|im_start|>user\nQ"
            "<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n");
  EXPECT_EQ(Trained(r), (std::vector<std::string>{"A<|im_end|>"}));
  EXPECT_EQ(t->Render({{"user", "Hi"}, {"assistant", "A"}}).text,
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You "
            "are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi"
            "<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n");
  absl::StatusOr<ChatTemplate> plain =
      ChatTemplate::Detect(kChatMl, "<|im_end|>", "");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->Render({{"user", "Hi"}, {"assistant", "A"}}).text,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nA"
            "<|im_end|>\n");
  EXPECT_EQ(plain->RenderPrompt({{"user", "Hi"}}),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, RendersMistralFoldingTheSystemPrompt) {
  absl::StatusOr<ChatTemplate> t =
      ChatTemplate::Detect(kMistral, "</s>", "<s>");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->family(), ChatTemplate::Family::kMistral);
  const RenderedChat r = t->Render(kConversation);
  EXPECT_EQ(r.text, "<s> [INST] S\n\nHi [/INST] Yo</s> [INST] Q [/INST] A</s>");
  EXPECT_EQ(Trained(r), (std::vector<std::string>{"A</s>"}));
  // Named without a template: v0.1's spacing.
  absl::StatusOr<ChatTemplate> v01 =
      ChatTemplate::Named("mistral", "", "</s>", "<s>");
  ASSERT_TRUE(v01.ok()) << v01.status();
  EXPECT_EQ(v01->Render(kConversation).text,
            "<s>[INST] S\n\nHi [/INST]Yo</s>[INST] Q [/INST]A</s>");
}

TEST(ChatTemplateTest, NamedFamilyOverridesDetection) {
  absl::StatusOr<ChatTemplate> t =
      ChatTemplate::Named("chatml", "{{ something custom }}", "<|im_end|>");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->Render({{"user", "Hi"}, {"assistant", "A"}}).text,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nA"
            "<|im_end|>\n");
  EXPECT_EQ(ChatTemplate::Named("vicuna", "", "</s>").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ChatTemplateTest, UnknownTemplateIsAnError) {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Detect(
      "{% for message in messages %}### {{ message['role'] }}", "</s>");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(t.status().message().find(
                "unsupported chat template (chat_template.jinja or "
                "tokenizer_config.json's chat_template"),
            std::string::npos);
  // Either place may hold the template: the error names both.
  absl::StatusOr<ChatTemplate> none = ChatTemplate::Detect("", "</s>");
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(none.status().message().find(
                "neither chat_template.jinja nor tokenizer_config.json's "
                "chat_template"),
            std::string::npos);
}

}  // namespace
}  // namespace lathe::engine
